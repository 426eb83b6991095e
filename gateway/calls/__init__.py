"""The call domain, pure and free of I/O: the model (`model`: states, record, end reasons),
routing (`routing`) and admission of new INVITEs (`admission`)."""
