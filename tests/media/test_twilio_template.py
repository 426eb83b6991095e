"""The Twilio media message written from its template is the JSON json.dumps would write."""

from __future__ import annotations

import json

from media.agents.twilio import TwilioStream
from media.agents.wire import dumps


def test_media_messages_are_byte_for_byte_what_dumps_gives() -> None:
    stream = TwilioStream('MZ"odd%sid', "CA1", "AC1")
    stream.start()
    for chunk in range(1, 4):
        text = stream.media(b"\xff\x7f" * 80, 20 * chunk)
        message = json.loads(text)
        assert text == dumps(message)
        assert message["sequenceNumber"] == str(chunk + 1)  # start was 1
        assert message["media"]["chunk"] == str(chunk)
        assert message["streamSid"] == 'MZ"odd%sid'
    other = json.loads(stream.media(b"\x00", 80, track="outbound"))
    assert other["media"]["track"] == "outbound" and other["sequenceNumber"] == "5"
    assert json.loads(stream.media(b"\x00", 100))["sequenceNumber"] == "6"
