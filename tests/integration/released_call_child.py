"""Child process for test_sip_teardown: a SIP engine whose ended calls are released late.

`python -m tests.integration.released_call_child WORKDIR` runs a SipEngine on loopback with
echo sessions and SIPp placing 5 calls, 4 at a time: the 5th takes the pjsua call slot the
1st left. The engine keeps every ended SipCall (as a late garbage collection or a
`_released` list cleared after the next INVITE would) and drops the one whose slot a new call
took only once that new call is answered, on the SIP thread. Prints one JSON line: SIPp's
result and the calls the engine still counts.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from gateway.calls.events import Answered, Completed, Failed, WorkerEvent
from gateway.calls.leg import Final
from gateway.calls.model import CallRecord
from gateway.config import Config
from gateway.session.contract import CallControls, EchoSession, MediaSession
from gateway.sip.call import SipCall
from gateway.sip.engine import SipEngine
from tests.integration.peers import HOST, Sipp, free_sip_port

CALLS = 5


def main(workdir: Path) -> None:
    config = Config.model_validate(
        {
            "sip": {"listen": HOST, "port": free_sip_port(), "transports": ["udp"]},
            "trunks": [{"id": "loopback", "allowed_ips": ["127.0.0.0/8"]}],
            "numbers": [{"number": "+15550100", "agent": "echo"}],
            "agents": [{"id": "echo", "type": "echo", "delay_ms": 20}],
            "limits": {"max_concurrent_calls": 4},
            "node": {"media": "worker"},  # the engine runs the echo sessions on pjmedia
        }
    )
    ended: dict[int, SipCall] = {}  # pjsua slot -> an ended call kept alive
    dropped: list[str] = []
    done = threading.Event()
    finished = 0

    def emit(event: WorkerEvent) -> None:
        nonlocal finished
        if isinstance(event, Answered) and event.call_id in engine.calls:
            slot = engine.calls[event.call_id].getId()
            if slot in ended:  # a new call in a slot whose old SipCall still lives
                engine.schedule(0, lambda: dropped.append(str(ended.pop(slot).record.id)))
        if isinstance(event, Completed | Failed):
            finished += 1
            if finished == CALLS:
                done.set()

    def make_session(record: CallRecord, controls: CallControls) -> MediaSession:
        return EchoSession(20, 16000)

    engine = SipEngine(config, emit, make_session)
    on_ended = engine.on_ended

    def keep(call: SipCall, final: Final | None) -> None:
        ended[call.getId()] = call
        on_ended(call, final)

    engine.on_ended = keep  # type: ignore[method-assign]
    engine.start()
    sipp = Sipp(
        "uac_pcap.xml",
        remote=(HOST, config.sip.port),
        service="+15550100",
        calls=CALLS,
        rate=10,
        limit=4,
        duration_ms=0,
        workdir=workdir,
    )
    res = sipp.run(timeout=60)
    done.wait(10)
    left = engine.submit(lambda: len(engine.calls)).result(5)
    engine.submit(ended.clear).result(5)  # the rest die before the endpoint does
    engine.stop()
    print(
        json.dumps(
            {
                "successful": res.successful,
                "failed": res.failed,
                "errors": res.errors[-2000:],
                "dropped": dropped,
                "left": left,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
