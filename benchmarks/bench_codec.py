"""Micro-benchmark of the STUN/TURN codec (relay.stun): nanoseconds per operation.

Run from the repository root:  python -m benchmarks.bench_codec [--repeat 7] [--quick]

Each case is timed with timeit: ``repeat`` rounds of ``number`` calls; we print the best
round and the median round per call. Machines are noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import timeit
from collections.abc import Callable

from relay.stun import (
    Data,
    Lifetime,
    Message,
    MessageClass,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    Software,
    StreamFramer,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    data_indication,
    decode,
    demux_table,
    encode_channel_data,
    long_term_key,
    parse_channel_data,
    scan_send_indication,
    verify_fingerprint,
    verify_integrity,
)

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
KEY = long_term_key("1700000000:alice", "relay.example.org", "s3cr3t-passw0rd")
PAYLOAD = bytes(160)  # a typical Opus/20 ms RTP packet with SRTP overhead


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def conditions() -> str:
    return (
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, {platform.machine()}, "
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores"
    )


def build_cases() -> dict[str, Callable[[], object]]:
    allocate = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TID,
        [
            Username("1700000000:alice"),
            Realm("relay.example.org"),
            Nonce("obMatJos2AAAB" + "x" * 32),
            RequestedTransport(17),
        ],
    ).encode(key=KEY, integrity="sha1", fingerprint=True)

    def allocate_success() -> bytes:
        return Message(
            Method.ALLOCATE,
            MessageClass.SUCCESS,
            TID,
            [
                XorRelayedAddress("203.0.113.10", 49160),
                Lifetime(600),
                XorMappedAddress("198.51.100.7", 54321),
                Software("relay"),
            ],
        ).encode(key=KEY, integrity="sha1", fingerprint=True)

    channel_frame = encode_channel_data(0x4001, PAYLOAD)
    recv_buf = bytearray(65536)
    recv_buf[: len(channel_frame)] = channel_frame
    n_channel = len(channel_frame)

    send = Message(
        Method.SEND,
        MessageClass.INDICATION,
        TID,
        [XorPeerAddress("198.51.100.7", 5004), Data(PAYLOAD)],
    ).encode()
    send_buf = bytearray(65536)
    send_buf[: len(send)] = send
    n_send = len(send)

    # A TCP/TLS read holding 8 padded ChannelData frames and a STUN request, framed whole.
    stream_chunk = encode_channel_data(0x4001, PAYLOAD[:157], pad=True) * 8 + allocate
    framer = StreamFramer()  # whole frames only: nothing stays buffered between calls

    def frame_stream() -> int:
        return sum(1 for _ in framer.feed(stream_chunk))

    # The UDP loop's first-byte rule: the codec's table against the comparisons it replaced.
    demux = demux_table()
    first_bytes = bytes((0x40, 0x00, 0x4F, 0x80))

    def demux_by_table() -> int:
        n = 0
        for b in first_bytes:
            n += demux[b]
        return n

    def demux_by_compares() -> int:
        n = 0
        for b in first_bytes:
            n += 1 if 0x40 <= b <= 0x4F else 0 if b < 0x40 else 2
        return n

    def decode_verify() -> bool:
        msg = decode(allocate)
        return verify_integrity(msg, KEY) and verify_fingerprint(msg)

    return {
        "decode+verify_integrity+fingerprint (auth. Allocate)": decode_verify,
        "decode (auth. Allocate)": lambda: decode(allocate),
        "encode Allocate success + MI + FP": allocate_success,
        "parse_channel_data (160 B, reused buffer)": lambda: parse_channel_data(
            recv_buf, n_channel
        ),
        "scan_send_indication (160 B, reused buffer)": lambda: scan_send_indication(
            send_buf, n_send
        ),
        "data_indication (IPv4 peer, 160 B)": lambda: data_indication(
            TID, "198.51.100.7", 5004, PAYLOAD
        ),
        "StreamFramer.feed (8 x 160 B ChannelData + Allocate)": frame_stream,
        "first-byte demux x4: demux_table index": demux_by_table,
        "first-byte demux x4: two comparisons (inline rule)": demux_by_compares,
    }


def calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per round so that one round takes about ``min_time`` seconds."""
    timer = timeit.Timer(fn)
    timer.timeit(100)  # warm up
    one = timer.timeit(1000) / 1000
    return max(100, int(min_time / one) if one > 0 else 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7, help="timeit rounds per case and pass")
    parser.add_argument("--passes", type=int, default=2, help="passes over all cases (A B A B)")
    parser.add_argument("--quick", action="store_true", help="short rounds (smoke run)")
    args = parser.parse_args(argv)
    min_time = 0.02 if args.quick else 0.2
    print(f"relay.stun codec benchmark; {conditions()}")
    print(
        f"timeit: {args.passes} interleaved passes x {args.repeat} rounds per case, "
        f"~{min_time:g} s per round\n"
    )
    cases = build_cases()
    numbers = {name: calibrate(fn, min_time) for name, fn in cases.items()}
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    pass_best: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.passes):
        for name, fn in cases.items():
            n = numbers[name]
            got = [t / n * 1e9 for t in timeit.Timer(fn).repeat(repeat=args.repeat, number=n)]
            rounds[name].extend(got)
            pass_best[name].append(min(got))
    width = max(len(name) for name in cases)
    print(f"{'case':<{width}}  {'best ns/op':>10}  {'median ns/op':>12}  best per pass")
    for name in cases:
        per_pass = " / ".join(f"{b:.0f}" for b in pass_best[name])
        best, median = min(rounds[name]), statistics.median(rounds[name])
        print(f"{name:<{width}}  {best:>10.0f}  {median:>12.0f}  {per_pass}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
