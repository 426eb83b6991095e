"""A private mosquitto for tests. Import the fixture functions into a test module, e.g.
`from tests.integration.mosquitto import mosquitto_fixture`, then ask for `mosquitto`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.node.broker import EmbeddedBroker


@pytest.fixture(name="mosquitto")
def mosquitto_fixture() -> Iterator[EmbeddedBroker]:
    """A running mosquitto on 127.0.0.1 and a free port, stopped after the test."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(name="persistent_mosquitto")
def persistent_mosquitto_fixture() -> Iterator[EmbeddedBroker]:
    """Like `mosquitto`, but sessions and queued messages survive stop()/start()."""
    with EmbeddedBroker(persistence=True) as broker:
        yield broker
