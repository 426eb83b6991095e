"""The media contract's pure parts: the conference bridge's clock rate for a config."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Config
from gateway.session.contract import bridge_rate


def config(sip_codecs: list[str], *agents: dict[str, Any], **trunk: Any) -> Config:
    return Config.model_validate(
        {
            "sip": {"codecs": sip_codecs},
            "node": {"media": "worker"},  # the bridge is pjmedia's: only workers run one
            "trunks": [{"id": "t", **trunk}],
            "agents": [{"id": "echo", "type": "echo"}]
            + [{"id": f"a{i}", "url": "ws://127.0.0.1:9", **a} for i, a in enumerate(agents)],
        }
    )


TWILIO = {"type": "twilio-ws"}


@pytest.mark.parametrize(
    "cfg,rate",
    [
        (config(["PCMU", "PCMA"], TWILIO), 8000),  # narrowband calls, narrowband agents
        (config(["PCMU"], TWILIO, {"type": "pcm-ws", "sample_rate": 8000}), 8000),
        (config(["PCMU"], {"type": "webrtc", "url": "http://127.0.0.1:9/whip"}), 8000),
        (config(["PCMU"], TWILIO, {"type": "pcm-ws", "sample_rate": 16000}), 16000),
        (config(["PCMU"], {"type": "pcm-ws", "sample_rate": 24000}), 16000),
        (config(["PCMU", "G722"], TWILIO), 16000),  # a G.722 call carries 16 kHz audio
        (config(["PCMU"], TWILIO, codecs=["G722"]), 16000),  # a trunk's own codec list
        (Config(), 8000),  # the default codecs are G.711's
    ],
)
def test_the_bridge_runs_at_8khz_unless_a_codec_or_an_agent_needs_16khz(
    cfg: Config, rate: int
) -> None:
    assert bridge_rate(cfg) == rate


def test_the_media_plane_refuses_a_wideband_codec_by_name() -> None:
    with pytest.raises(ValueError, match="G722 needs node.media: worker"):
        Config.model_validate({"sip": {"codecs": ["PCMU", "G722"]}})
    with pytest.raises(ValueError, match="G722 needs node.media: worker"):
        Config.model_validate({"trunks": [{"id": "t", "codecs": ["G722"]}]})
