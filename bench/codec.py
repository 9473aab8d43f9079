"""Firmware codec: decode and encode frames per second, and the bit-flip experiment.

Frames: a fixed-seed mix of every frame type with random valid fields (lengths up to each
field's limit). Decode: the encoded stream fed to one `Decoder` in reads of 4096 bytes and
of 32 bytes (a serial read returns whatever has arrived). Encode: `encode()` of the same
frames. Each figure is the best of several repetitions.

Bit flips: each case takes a random valid frame, flips k distinct random bits in its wire
bytes (k uniform in 1..8, anywhere, the `$`, CRC digits and CR LF included), and feeds the
corrupted bytes and then an intact sentinel frame to a streaming decoder. A case fails if
any frame other than the sentinel comes out (a corrupted frame accepted) or the sentinel
is lost (no resync). Cases whose CRC happened to match the corrupted bytes are counted too:
CRC-16 catches every error of 1 to 3 bits and every odd number of bits, otherwise about
1 in 65536 corruptions, and the field checks must reject those.
"""

from __future__ import annotations

import argparse
import platform
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import get_args

from bench.figures import Figure, write_json
from firmware_bridge import (
    FRAME_TYPES,
    MAX_SEQ,
    Ack,
    Button,
    ButtonEvent,
    Decoder,
    Direction,
    Fault,
    Frame,
    Heartbeat,
    Hello,
    Lamp,
    LampState,
    Nak,
    NakCode,
    Reading,
    Refuse,
    SelfTest,
    TestTarget,
    TimeSync,
    Unit,
    Welcome,
    crc16,
    encode,
)
from firmware_bridge.frames import FAULT_STATES, FaultCode

IDENT = string.ascii_letters + string.digits + "._-"
TEXT = "".join(c for c in map(chr, range(0x20, 0x7F)) if c not in "$*,")
CAP_FIRST, CAP_REST = string.ascii_lowercase, string.ascii_lowercase + string.digits
SENTINEL = Heartbeat(seq=4242, uptime_s=4242)


def _word(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choices(alphabet, k=rng.randint(lo, hi)))


def _number(rng: random.Random, unit: Unit) -> Decimal:
    if unit == "bool":
        return Decimal(rng.randint(0, 1))
    if unit == "count":
        return Decimal(rng.randint(0, 10**9))
    whole = rng.choice(["0", str(rng.randint(1, 10**rng.randint(1, 9)))])
    frac = "" if rng.random() < 0.3 else "." + _word(rng, string.digits, 1, 6)
    sign = "-" if rng.random() < 0.3 else ""
    return Decimal(sign + whole + frac)


def _hello(rng: random.Random, seq: int, ident: str) -> Frame:
    caps = {CAP_FIRST[rng.randrange(26)] + _word(rng, CAP_REST, 0, 11)
            for _ in range(rng.randint(1, 8))}
    return Hello(seq=seq, device_id=_word(rng, IDENT, 1, 32),
                 firmware=_word(rng, IDENT + "+", 1, 32), protocol=rng.randint(1, 3),
                 capabilities=tuple(sorted(caps)))


def _heartbeat(rng: random.Random, seq: int, ident: str) -> Frame:
    return Heartbeat(seq=seq, uptime_s=rng.randint(0, 2**32 - 1))


def _button(rng: random.Random, seq: int, ident: str) -> Frame:
    return Button(seq=seq, button=ident, event=rng.choice(get_args(ButtonEvent)))


def _reading(rng: random.Random, seq: int, ident: str) -> Frame:
    unit: Unit = rng.choice(get_args(Unit))
    return Reading(seq=seq, sensor=ident, value=_number(rng, unit), unit=unit)


def _fault(rng: random.Random, seq: int, ident: str) -> Frame:
    code: FaultCode = rng.choice(get_args(FaultCode))
    detail = "" if rng.random() < 0.5 else _word(rng, TEXT, 1, 100)
    return Fault(seq=seq, code=code, source=ident, state=rng.choice(FAULT_STATES[code]),
                 detail=detail)


def _ack(rng: random.Random, seq: int, ident: str) -> Frame:
    return Ack(seq=seq, ref=rng.randint(0, MAX_SEQ))


def _nak(rng: random.Random, seq: int, ident: str) -> Frame:
    detail = "" if rng.random() < 0.5 else _word(rng, TEXT, 1, 100)
    nak: NakCode = rng.choice(get_args(NakCode))
    return Nak(seq=seq, ref=rng.randint(0, MAX_SEQ), code=nak, detail=detail)


def _welcome(rng: random.Random, seq: int, ident: str) -> Frame:
    return Welcome(seq=seq, protocol=1)


def _refuse(rng: random.Random, seq: int, ident: str) -> Frame:
    return Refuse(seq=seq, protocol=1, reason=_word(rng, TEXT, 1, 160))


def _lamp(rng: random.Random, seq: int, ident: str) -> Frame:
    state: LampState = rng.choice(get_args(LampState))
    return Lamp(seq=seq, lamp=ident, state=state)


def _self_test(rng: random.Random, seq: int, ident: str) -> Frame:
    target: TestTarget = rng.choice(get_args(TestTarget))
    return SelfTest(seq=seq, target=target)


def _time_sync(rng: random.Random, seq: int, ident: str) -> Frame:
    return TimeSync(seq=seq, unix_s=rng.randint(0, 2**32 - 1))


#: A random frame of each wire type, from (rng, seq, a random identifier); `TimeSync` for
#: any type not listed.
_RANDOM_FRAME: dict[str, Callable[[random.Random, int, str], Frame]] = {
    "HELLO": _hello,
    "HB": _heartbeat,
    "BTN": _button,
    "READ": _reading,
    "FAULT": _fault,
    "ACK": _ack,
    "NAK": _nak,
    "WELCOME": _welcome,
    "REFUSE": _refuse,
    "LAMP": _lamp,
    "TEST": _self_test,
}


def random_frame(rng: random.Random) -> Frame:
    """One frame of a random type with random valid fields."""
    seq = rng.randint(0, MAX_SEQ)
    kind = rng.choice(list(FRAME_TYPES))
    ident = _word(rng, IDENT, 1, 16)
    return _RANDOM_FRAME.get(kind, _time_sync)(rng, seq, ident)


def direction_of(frame: Frame) -> Direction:
    """A direction the frame travels (uplink for HB)."""
    return "uplink" if "uplink" in frame.DIRECTIONS else "downlink"


def crc_matches(data: bytes) -> bool:
    """Whether some `$`...LF line in `data` is framed right and carries a matching CRC."""
    for piece in data.split(b"$")[1:]:
        end = piece.find(b"\n")
        if end < 0:
            continue
        body_crc = piece[:end + 1]
        if (len(body_crc) >= 7 and body_crc[-7:-6] == b"*" and body_crc[-2:] == b"\r\n"
                and body_crc[-6:-2] == b"%04X" % crc16(body_crc[:-7])):
            return True
    return False


@dataclass
class FlipResult:
    """The outcome of the bit-flip experiment."""

    cases: int
    accepted_corrupted: int = 0
    sentinel_lost: int = 0
    crc_matched: int = 0
    seconds: float = 0.0
    flips: Counter[int] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)


def bit_flip_trials(cases: int, seed: int = 1, pool_size: int = 2000,
                    max_flips: int = 8) -> FlipResult:
    """Run `cases` random bit-flip cases (see the module docstring)."""
    rng = random.Random(seed)
    pool = [random_frame(rng) for _ in range(pool_size)]
    wire = [(encode(f), direction_of(f)) for f in pool]
    sentinel = encode(SENTINEL)
    decoders = {"uplink": Decoder("uplink"), "downlink": Decoder("downlink")}
    result = FlipResult(cases)
    random_ = rng.random
    start = time.perf_counter()
    for _ in range(cases):
        raw, direction = wire[rng.randrange(pool_size)]
        k = rng.randint(1, max_flips)
        corrupted = bytearray(raw)
        nbits = len(raw) * 8
        bits: set[int] = set()
        while len(bits) < k:
            bits.add(int(random_() * nbits))
        for bit in bits:
            corrupted[bit >> 3] ^= 1 << (bit & 7)
        result.flips[k] += 1
        frames = decoders[direction].feed(bytes(corrupted) + sentinel)
        if frames[-1:] != [SENTINEL]:
            result.sentinel_lost += 1
            result.accepted_corrupted += len(frames)
        else:
            result.accepted_corrupted += len(frames) - 1
        # Only single-digit thousandths of cases get here: 1 in 65536, and 1 to 3 bits never.
        if k >= 2 and crc_matches(bytes(corrupted)):
            result.crc_matched += 1
    result.seconds = time.perf_counter() - start
    for decoder in decoders.values():
        result.counters.update(decoder.counters)
    return result


def _best(reps: int, fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(reps))


def decode_rate(stream: bytes, frames: int, read_size: int, reps: int) -> float:
    """Frames per second decoded from `stream`, fed in reads of `read_size` bytes."""
    chunks = [stream[i:i + read_size] for i in range(0, len(stream), read_size)]

    def once() -> float:
        decoder = Decoder("uplink")
        start = time.perf_counter()
        got = sum(len(decoder.feed(chunk)) for chunk in chunks)
        seconds = time.perf_counter() - start
        assert got == frames, (got, frames, decoder.counters)
        return frames / seconds
    return _best(reps, once)


def encode_rate(frames: Sequence[Frame], reps: int) -> float:
    """Frames per second encoded."""
    def once() -> float:
        start = time.perf_counter()
        for frame in frames:
            encode(frame)
        return len(frames) / (time.perf_counter() - start)
    return _best(reps, once)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--frames", type=int, default=50_000, help="frames per rate run")
    parser.add_argument("--flips", type=int, default=1_000_000, help="bit-flip cases")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write results as JSON")
    args = parser.parse_args()
    n, flips, reps = (5_000, 20_000, 2) if args.quick else (args.frames, args.flips, 5)
    print(f"machine: {platform.machine()}; {platform.platform()}; "
          f"Python {platform.python_version()}")

    rng = random.Random(args.seed)
    uplink = [random_frame(rng) for _ in range(n * 3)]
    uplink = [f for f in uplink if "uplink" in f.DIRECTIONS][:n]
    stream = b"".join(encode(f) for f in uplink)
    print(f"\n## Codec rates ({len(uplink)} mixed uplink frames, "
          f"{len(stream) / len(uplink):.0f} bytes each on average)\n")
    print("| figure | frames/s |")
    print("|---|---|")
    figures = []
    for read_size in (4096, 32):
        rate = decode_rate(stream, len(uplink), read_size, reps)
        print(f"| decode, {read_size}-byte reads | {rate:,.0f} |")
        figures.append(Figure(f"decode, {read_size}-byte reads", rate, "frames/s"))
    encoded = encode_rate(uplink, reps)
    print(f"| encode | {encoded:,.0f} |")
    figures.append(Figure("encode", encoded, "frames/s"))
    sys.stdout.flush()

    result = bit_flip_trials(flips, seed=args.seed)
    print(f"\n## Bit flips ({result.cases:,} cases, 1..8 random bits per frame, "
          f"{result.seconds:.1f} s)\n")
    print(f"- corrupted frames accepted: {result.accepted_corrupted}")
    print(f"- sentinel frames lost (no resync): {result.sentinel_lost}")
    print(f"- cases whose CRC matched by chance (rejected by field checks): "
          f"{result.crc_matched}")
    print("- decoder counters: " + ", ".join(f"{k} {v}" for k, v in
                                             sorted(result.counters.items())))
    figures += [
        Figure("bit flips: corrupted frames accepted", result.accepted_corrupted, "frames",
               target="0", met=result.accepted_corrupted == 0),
        Figure("bit flips: sentinel frames lost", result.sentinel_lost, "frames",
               target="0", met=result.sentinel_lost == 0),
    ]
    write_json(args.json, "codec", figures, {"cases": result.cases, "seed": args.seed})


if __name__ == "__main__":
    main()
