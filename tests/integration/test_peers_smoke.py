"""Smoke tests of the peer helpers, without the gateway: SIPp against SIPp, Kamailio, baresip."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.integration.peers import (
    HOST,
    Baresip,
    Kamailio,
    RtpSink,
    Sipp,
    peer_stack,
    sip_options,
    speech_samples,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Stack = contextlib.ExitStack
__all__ = ["peer_stack"]  # fixture re-exported for pytest


def _pcmu(samples: list[int]) -> bytes:
    import importlib.util

    from tests.integration.peers import SCENARIOS

    spec = importlib.util.spec_from_file_location("mp", SCENARIOS / "make_pcap.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return bytes(mod.linear_to_ulaw(s) for s in samples)


def test_sipp_uac_pcap_calls_sipp_uas_and_rtp_flows(tmp_path: Path, peer_stack: Stack) -> None:
    with RtpSink() as sink:
        uas = peer_stack.enter_context(Sipp("uas.xml", workdir=tmp_path / "uas"))
        sink_uas = peer_stack.enter_context(
            Sipp("uas_rtp_sink.xml", keys={"rtp_port": sink.port}, workdir=tmp_path / "sink-uas")
        )
        uac1 = peer_stack.enter_context(
            Sipp(
                "uac_pcap.xml",
                remote=(HOST, uas.port),
                service="+15550100",
                workdir=tmp_path / "uac1",
            )
        )
        uac2 = peer_stack.enter_context(
            Sipp(
                "uac_pcap.xml",
                remote=(HOST, sink_uas.port),
                service="+15550100",
                workdir=tmp_path / "uac2",
            )
        )
        for s in (uac1, uac2, uas, sink_uas):
            res = s.wait(20)
            assert res.ok, (s.scenario.name, res.returncode, res.errors)
        assert res.successful == 1 and res.failed == 0
        # 3.0 s of PCMU, exactly the known signal, in order
        assert sink.wait_for(150, timeout=2)
        audio = [p for p in sink.packets if p.payload_type == 0]
        assert len(audio) == 150
        assert [p.seq for p in audio] == list(range(1, 151))
        assert sink.payload(pt=0) == _pcmu(speech_samples(3.0))


def test_sipp_dtmf_pcap_sends_rfc4733_events(tmp_path: Path, peer_stack: Stack) -> None:
    with RtpSink() as sink:
        uas = peer_stack.enter_context(
            Sipp("uas_rtp_sink.xml", keys={"rtp_port": sink.port}, workdir=tmp_path / "u")
        )
        uac = Sipp("uac_dtmf.xml", remote=(HOST, uas.port), workdir=tmp_path / "c").run(15)
        assert uac.ok, uac.errors
        assert uas.wait(5).ok
        events = [p for p in sink.packets if p.payload_type == 101]
        seen: set[tuple[int, int]] = set()
        ended: list[int] = []
        for p in events:  # one end-of-event per (timestamp, event); 3 retransmitted ends each
            key = (p.timestamp, p.payload[0])
            if p.payload[1] & 0x80 and key not in seen:
                seen.add(key)
                ended.append(p.payload[0])
        assert "".join("0123456789*#"[e] for e in ended) == "1234#"
        assert events[0].marker


def test_sipp_cancel_busy_and_info(tmp_path: Path, peer_stack: Stack) -> None:
    ring = peer_stack.enter_context(Sipp("uas_ring_forever.xml", workdir=tmp_path / "ring"))
    res = Sipp("uac_cancel.xml", remote=(HOST, ring.port), workdir=tmp_path / "cancel").run(10)
    assert res.ok, res.errors
    assert ring.wait(5).ok

    busy = peer_stack.enter_context(Sipp("uas_busy.xml", workdir=tmp_path / "busy"))
    res = Sipp("uac_pcap.xml", remote=(HOST, busy.port), workdir=tmp_path / "c2").run(10)
    assert res.returncode == 1 and res.failed == 1 and res.successful == 0
    assert busy.wait(5).ok

    uas = peer_stack.enter_context(
        Sipp("uas.xml", workdir=tmp_path / "uas")
    )  # -aa answers the INFOs
    res = Sipp("uac_dtmf_info.xml", remote=(HOST, uas.port), workdir=tmp_path / "info").run(10)
    assert res.ok, res.errors
    assert uas.wait(5).ok


def test_uas_hangup_sends_bye(tmp_path: Path, peer_stack: Stack) -> None:
    uas = peer_stack.enter_context(Sipp("uas_hangup.xml", workdir=tmp_path / "uas"))
    # uac_pcap does not expect a BYE while it plays: the call fails on the UAC side, but the
    # UAS (which sent BYE and must get 200 for it) succeeds. Baresip checks the BYE path too.
    with Baresip(workdir=tmp_path / "b") as phone:
        phone.dial(f"sip:1000@{HOST}:{uas.port}")
        phone.wait_established()
        phone.wait_closed(timeout=8)
    assert uas.wait(5).ok


def test_kamailio_register_then_call_right_and_wrong_password(
    tmp_path: Path, peer_stack: Stack
) -> None:
    uas = peer_stack.enter_context(Sipp("uas.xml", calls=None, workdir=tmp_path / "uas"))
    try:
        with Kamailio(
            users={"alice": "secret"},
            auth_invite=True,
            forward_to=f"{HOST}:{uas.port}",
            workdir=tmp_path / "k",
        ) as k:
            good = Sipp(
                "register_then_call.xml",
                remote=k.addr,
                keys={"user": "alice"},
                auth=("alice", "secret"),
                service="1000",
                workdir=tmp_path / "good",
            )
            bad = Sipp(
                "register_then_call.xml",
                remote=k.addr,
                keys={"user": "alice"},
                auth=("alice", "WRONG"),
                service="1000",
                workdir=tmp_path / "bad",
            )
            peer_stack.enter_context(good)
            res_bad = bad.run(10)
            assert res_bad.returncode == 1 and res_bad.failed == 1, res_bad.errors
            assert "403" in res_bad.errors
            res = good.wait(15)
            assert res.ok, (res.errors, k.log()[-2000:])

            k.restart()
            reply = sip_options(*k.addr)
            assert reply is not None and reply.status == 200
    finally:
        res_uas = uas.stop()
    assert res_uas.successful == 1 and res_uas.failed == 0


def test_baresip_registers_and_calls_sipp_uas_via_kamailio(
    tmp_path: Path, peer_stack: Stack
) -> None:
    uas = peer_stack.enter_context(Sipp("uas.xml", workdir=tmp_path / "uas"))
    k = peer_stack.enter_context(
        Kamailio(
            users={"bob": "pw-bob"},
            auth_invite=True,
            forward_to=f"{HOST}:{uas.port}",
            workdir=tmp_path / "k",
        )
    )
    # baresip sends everything through the registrar (outbound proxy): REGISTER with digest,
    # then INVITE (407 challenge) -> Kamailio -> SIPp uas.xml
    with Baresip(user="bob", registrar=k.addr, password="pw-bob", workdir=tmp_path / "b") as phone:
        phone.wait_registered()
        phone.dial(f"sip:1000@{HOST}:{k.port}")
        phone.wait_established()
        phone.hangup()
        phone.wait_closed()
    res = uas.wait(5)
    assert res.ok, res.errors


def test_baresip_wrong_password_is_refused(tmp_path: Path, peer_stack: Stack) -> None:
    k = peer_stack.enter_context(Kamailio(users={"bob": "pw-bob"}, workdir=tmp_path / "k"))
    phone = peer_stack.enter_context(
        Baresip(user="bob", registrar=k.addr, password="nope", workdir=tmp_path / "b")
    )
    with pytest.raises(RuntimeError):  # "403 Wrong password" seen before any 200
        phone.wait_registered()
