"""Before a start: each port the node binds is checked, and a busy one is named with its key,
protocol, address and holder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from gateway.config import parse_config
from gateway.node.broker import BrokerError, EmbeddedBroker
from gateway.node.ports import PortInUse, check_ports_free, port_holder


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def udp_socket() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def config_on(sip: int, mqtt: int, api: int, transports: str = "[udp, tcp]") -> str:
    return (
        f"sip: {{listen: 127.0.0.1, port: {sip}, transports: {transports}}}\n"
        f"mqtt: {{embedded: true, port: {mqtt}}}\napi: {{port: {api}}}\n"
    )


def free(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_free_ports_pass() -> None:
    check_ports_free(parse_config(config_on(free(socket.SOCK_DGRAM), free(), free()), "x", {}))


def test_a_busy_mqtt_port_is_named_with_its_holder(tcp_listener: int) -> None:
    config = parse_config(config_on(free(socket.SOCK_DGRAM), tcp_listener, free()), "x", {})
    with pytest.raises(PortInUse) as info:
        check_ports_free(config)
    (problem,) = info.value.problems
    assert problem.startswith(
        f"mqtt.port {tcp_listener} is already in use (TCP 127.0.0.1:{tcp_listener}, "
        f"by pid {os.getpid()} ("
    ), problem


def test_a_busy_sip_udp_port_is_named(udp_socket: int) -> None:
    config = parse_config(config_on(udp_socket, free(), free(), "[udp]"), "x", {})
    with pytest.raises(PortInUse, match=rf"^sip.port {udp_socket} is already in use \(UDP "):
        check_ports_free(config)


def test_a_busy_api_port_is_named(tcp_listener: int) -> None:
    config = parse_config(config_on(free(socket.SOCK_DGRAM), free(), tcp_listener), "x", {})
    with pytest.raises(PortInUse, match=rf"^api.port {tcp_listener} is already in use \(TCP "):
        check_ports_free(config)


def test_no_holder_is_named_for_a_port_nobody_holds() -> None:
    assert port_holder("tcp", free()) is None


def test_the_embedded_broker_names_a_busy_fixed_port(tcp_listener: int) -> None:
    broker = EmbeddedBroker(tcp_listener)
    try:
        with pytest.raises(BrokerError, match=rf"^port {tcp_listener} is already in use"):
            broker.start()
    finally:
        broker.close()


def test_behind_an_external_front_its_ports_are_not_ours_but_the_workers_are(
    udp_socket: int,
) -> None:
    """The operator's front holds sip.port and its socket for the workers (here on this
    machine); the workers' ports are the node's to bind."""

    def node(front_port: int, workers: int) -> str:
        return (
            f"sip: {{listen: 127.0.0.1, port: {udp_socket}, transports: [udp], front: "
            f"{{mode: external, port: {front_port}, worker_ports_start: {workers}}}}}\n"
            "mqtt: {port: 1883}\napi: {enabled: false}\n"
        )

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as front:
        front.bind(("127.0.0.1", 0))
        front_port = front.getsockname()[1]
        check_ports_free(parse_config(node(front_port, free(socket.SOCK_DGRAM)), "x", {}))
        taken = parse_config(node(free(socket.SOCK_DGRAM), front_port), "x", {})
        with pytest.raises(PortInUse, match=rf"^sip.front.worker_ports_start {front_port} is"):
            check_ports_free(taken)
