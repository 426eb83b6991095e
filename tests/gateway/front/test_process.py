"""The front process's pure parts: its log lines as ours, the OPTIONS it probes itself with."""

from __future__ import annotations

import logging

from gateway.front.process import log_line, options_request


def test_kamailio_notice_is_our_info_and_its_info_our_debug() -> None:
    assert log_line(
        " 9(23761) NOTICE: <script>: event=front_refused source=127.0.0.6 code=403"
    ) == (logging.INFO, "event=front_refused source=127.0.0.6 code=403")
    assert log_line(" 1(23753) INFO: <script>: event=front_refused sip_call_id=x")[0] == (
        logging.DEBUG
    )
    assert log_line(
        " 1(23753) ERROR: <core> [core/receive.c:376]: receive_msg(): core parsing failed"
    ) == (logging.ERROR, "<core> [core/receive.c:376]: receive_msg(): core parsing failed")
    assert log_line(" 3(1) WARNING: <script>: event=front_flood_dropping source=1.2.3.4")[0] == (
        logging.WARNING
    )
    assert log_line("Listening on ") == (logging.INFO, "Listening on ")


def test_the_readiness_probe_is_a_well_formed_options() -> None:
    text = options_request("127.0.0.1", 5060, 40000, "udp").decode()
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "OPTIONS sip:127.0.0.1:5060 SIP/2.0"
    assert lines[1].startswith("Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK")
    assert "CSeq: 1 OPTIONS" in lines and "Content-Length: 0" in lines and body == ""
    assert options_request("::1", 5060, 4, "tcp").startswith(b"OPTIONS sip:[::1]:5060 SIP/2.0")
