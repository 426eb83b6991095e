"""What call.quality costs the media plane per received RTP packet: RtpStats.packet, and
reading a datagram with its kernel arrival time (recvmsg + SO_TIMESTAMPNS) against a plain
recvfrom. Prints µs per packet (repeats, median), or `--json`.

    .venv/bin/python bench/quality_cost.py [--packets 200000] [--reads 50000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time

from gateway.plane.process import ANC_BYTES, SO_TIMESTAMPNS, _arrival
from media.quality import RtpStats


def stats_us(packets: int) -> float:
    stats = RtpStats()
    start = time.perf_counter()
    for i in range(packets):
        stats.packet(1, i & 0xFFFF, i * 160, 100 + i * 0.02)
    return (time.perf_counter() - start) / packets * 1e6


def read_us(reads: int, timestamps: bool) -> float:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:  # fmt: skip
        tx.bind(("127.0.0.1", 0))
        rx.bind(("127.0.0.1", 0))
        if timestamps:
            rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        packet, to, total = bytes(172), rx.getsockname(), 0.0
        for _ in range(reads):
            tx.sendto(packet, to)
            start = time.perf_counter()
            if timestamps:
                _arrival(rx.recvmsg(2048, ANC_BYTES)[1])
            else:
                rx.recvfrom(2048)
            total += time.perf_counter() - start
    return total / reads * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = {"rtpstats_packet_us": [], "recvfrom_us": [], "recvmsg_timestamp_us": []}
    for _ in range(args.repeat):
        runs["rtpstats_packet_us"].append(stats_us(args.packets))
        runs["recvfrom_us"].append(read_us(args.reads, False))
        runs["recvmsg_timestamp_us"].append(read_us(args.reads, True))
    result = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    result["spread"] = {k: [round(min(v), 3), round(max(v), 3)] for k, v in runs.items()}
    if args.json:
        print(json.dumps(result))
        return
    for key in ("rtpstats_packet_us", "recvfrom_us", "recvmsg_timestamp_us"):
        low, high = result["spread"][key]
        print(f"{key:22s} {result[key]:7.3f}   (runs {low}-{high})")


if __name__ == "__main__":
    main()
