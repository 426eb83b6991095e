"""The call domain, pure and free of I/O: the model (`model`: states, record, end reasons), the
call-leg state machine (`leg`: SIP happenings in, actions out), routing (`routing`) and
admission of new INVITEs (`admission`)."""
