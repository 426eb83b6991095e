"""Fixtures that start real peers, shared by every integration test module."""

from tests.integration.peers import baresip_factory, kamailio, peer_stack, sipp_uas

__all__ = ["baresip_factory", "kamailio", "peer_stack", "sipp_uas"]
