"""A private mosquitto for tests: import the fixtures into a test module to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.broker import EmbeddedBroker


@pytest.fixture
def mosquitto() -> Iterator[EmbeddedBroker]:
    """A running mosquitto on 127.0.0.1 and a free port, stopped after the test."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def persistent_mosquitto() -> Iterator[EmbeddedBroker]:
    """Like `mosquitto`, but sessions and queued messages survive stop()/start()."""
    with EmbeddedBroker(persistence=True) as broker:
        yield broker
