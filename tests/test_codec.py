"""The firmware codec: frames survive the wire exactly, and a noisy wire never fools it.

What a board author and the serial transport rely on: every valid frame round-trips byte for
byte; after garbage the decoder picks up again at the next `$`; no corrupted frame is ever
accepted; every rejection is counted with its reason; memory stays bounded whatever arrives;
the sequence tracker tells lost frames, duplicates and resets apart; and the examples in
docs/firmware-protocol.md are true.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.codec import SENTINEL, bit_flip_trials, direction_of
from firmware_bridge import (
    DOWNLINK_TYPES,
    FRAME_TYPES,
    MAX_FRAME_LEN,
    MAX_SEQ,
    PROTOCOL_VERSION,
    REJECT_REASONS,
    UPLINK_TYPES,
    Ack,
    BridgeError,
    Button,
    Decoder,
    Direction,
    Fault,
    Frame,
    FrameError,
    Heartbeat,
    Hello,
    Lamp,
    Nak,
    ProtocolVersionError,
    Reading,
    Refuse,
    SelfTest,
    SeqResult,
    SequenceTracker,
    TimeSync,
    Welcome,
    check_protocol_version,
    crc16,
    encode,
    negotiate,
    next_seq,
    parse_frame,
)
from firmware_bridge.__main__ import main as cli_main
from firmware_bridge.frames import FAULT_STATES

DOC = Path(__file__).resolve().parents[1] / "docs" / "firmware-protocol.md"
SENTINEL_WIRE = encode(SENTINEL)

# ------------------------------------------------------------------------------ strategies

seqs = st.integers(0, MAX_SEQ)
u32s = st.integers(0, 2**32 - 1)
idents = st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True)
device_ids = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)
firmwares = st.from_regex(r"[A-Za-z0-9._+-]{1,32}", fullmatch=True)
protocols = st.integers(1, MAX_SEQ)
capabilities = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,11}", fullmatch=True),
                        min_size=1, max_size=8, unique=True).map(tuple)
numbers = st.from_regex(r"-?(0|[1-9][0-9]{0,9})(\.[0-9]{1,8})?", fullmatch=True).map(Decimal)


def texts(max_size: int) -> st.SearchStrategy[str]:
    """Text a field may carry: printable ASCII without `$`, `*` and `,`."""
    return st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                 exclude_characters="$*,"), min_size=1, max_size=max_size)


def _fault(code: str) -> st.SearchStrategy[Fault]:
    return st.builds(Fault, seq=seqs, code=st.just(code), source=idents,
                     state=st.sampled_from(FAULT_STATES[code]),  # type: ignore[index]
                     detail=st.just("") | texts(100))


#: A strategy of valid frames for each wire type.
FRAMES: dict[str, st.SearchStrategy[Any]] = {
    "HELLO": st.builds(Hello, seq=seqs, device_id=device_ids, firmware=firmwares,
                       protocol=protocols, capabilities=capabilities),
    "HB": st.builds(Heartbeat, seq=seqs, uptime_s=u32s),
    "BTN": st.builds(Button, seq=seqs, button=idents,
                     event=st.sampled_from(["press", "hold", "release"])),
    "READ": st.one_of(
        st.builds(Reading, seq=seqs, sensor=idents, value=numbers,
                  unit=st.sampled_from(["dB", "mm", "C", "%", "V"])),
        st.builds(Reading, seq=seqs, sensor=idents, unit=st.just("bool"),
                  value=st.sampled_from([Decimal(0), Decimal(1)])),
        st.builds(Reading, seq=seqs, sensor=idents, unit=st.just("count"),
                  value=st.integers(0, 10**19 - 1).map(Decimal)),
    ),
    "FAULT": st.sampled_from(sorted(FAULT_STATES)).flatmap(_fault),
    "ACK": st.builds(Ack, seq=seqs, ref=seqs),
    "NAK": st.builds(Nak, seq=seqs, ref=seqs,
                     code=st.sampled_from(["unsupported", "invalid", "busy", "failed"]),
                     detail=st.just("") | texts(100)),
    "WELCOME": st.builds(Welcome, seq=seqs, protocol=protocols),
    "REFUSE": st.builds(Refuse, seq=seqs, protocol=protocols, reason=texts(160)),
    "LAMP": st.builds(Lamp, seq=seqs, lamp=idents,
                      state=st.sampled_from(["idle", "accepted", "sent", "acknowledged",
                                             "fault"])),
    "TEST": st.builds(SelfTest, seq=seqs, target=st.sampled_from(["all", "spkmic", "sensor"])),
    "TIME": st.builds(TimeSync, seq=seqs, unix_s=u32s),
}
any_frame = st.one_of(*(FRAMES[t] for t in sorted(FRAMES)))
uplink_frame = st.one_of(*(FRAMES[t] for t in sorted(UPLINK_TYPES)))
garbage = st.binary(min_size=1, max_size=300) | st.lists(
    st.sampled_from([b"$", b"\r", b"\n", b"\r\n", b"*", b",", b"=", b"HB", b"1", b"A", b"\xff"]),
    min_size=1, max_size=60).map(b"".join)


def feed_in_chunks(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed `data` split at `cuts` (any integers), checking the buffer bound after each read."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    frames: list[Frame] = []
    for a, b in itertools.pairwise([0, *points, len(data)]):
        frames += decoder.feed(data[a:b])
        assert decoder.buffered < MAX_FRAME_LEN
    return frames


def flip(raw: bytes, bits: set[int]) -> bytes:
    """`raw` with the given bit positions inverted (bit 0 is the lowest bit of byte 0)."""
    out = bytearray(raw)
    for bit in bits:
        out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


# ------------------------------------------------------------------------- CRC and frames


def test_crc_is_ccitt_false_with_its_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_strategies_cover_every_frame_type() -> None:
    assert set(FRAMES) == set(FRAME_TYPES) == UPLINK_TYPES | DOWNLINK_TYPES


@given(frame=any_frame)
@settings(max_examples=1500)
def test_every_frame_round_trips_byte_for_byte(frame: Frame) -> None:
    wire = encode(frame)
    assert wire.startswith(b"$")
    assert wire.endswith(b"\r\n")
    assert len(wire) <= MAX_FRAME_LEN
    body = wire[1:-7].decode("ascii")
    assert body.isprintable()
    assert "$" not in body
    assert "*" not in body
    assert parse_frame(wire) == frame
    assert encode(parse_frame(wire)) == wire
    decoder = Decoder(direction_of(frame))
    assert decoder.feed(wire) == [frame]
    assert decoder.decoded == 1
    assert sum(decoder.counters.values()) == 0


def _largest() -> list[Frame]:
    big, dev, text100, text160 = "x" * 16, "d" * 32, "t" * 100, "r" * 160
    caps = tuple(f"c{i}{'a' * 10}" for i in range(8))
    return [
        Hello(seq=MAX_SEQ, device_id=dev, firmware="f" * 32, protocol=MAX_SEQ, capabilities=caps),
        Heartbeat(seq=MAX_SEQ, uptime_s=2**32 - 1),
        Button(seq=MAX_SEQ, button=big, event="release"),
        Reading(seq=MAX_SEQ, sensor=big, value=Decimal("-1234567890.12345678"), unit="mm"),
        Fault(seq=MAX_SEQ, code="sensor", source=big, state="clear", detail=text100),
        Ack(seq=MAX_SEQ, ref=MAX_SEQ),
        Nak(seq=MAX_SEQ, ref=MAX_SEQ, code="unsupported", detail=text100),
        Welcome(seq=MAX_SEQ, protocol=MAX_SEQ),
        Refuse(seq=MAX_SEQ, protocol=MAX_SEQ, reason=text160),
        Lamp(seq=MAX_SEQ, lamp=big, state="acknowledged"),
        SelfTest(seq=MAX_SEQ, target="spkmic"),
        TimeSync(seq=MAX_SEQ, unix_s=2**32 - 1),
    ]


def test_the_largest_frame_of_every_type_fits_the_limit() -> None:
    frames = _largest()
    assert {f.TYPE for f in frames} == set(FRAME_TYPES)
    for frame in frames:
        assert len(encode(frame)) <= MAX_FRAME_LEN, frame.TYPE


def test_the_base_class_is_not_a_frame() -> None:
    with pytest.raises(TypeError, match="build a Hello"):
        Frame(seq=1)


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: Lamp(seq=1, lamp="hp1", state="on"),  # type: ignore[arg-type]
     "LAMP state='on': expected one of idle, accepted, sent, acknowledged, fault"),
    (lambda: Heartbeat(seq=1, uptime_s=-1), "HB up=-1: expected a decimal integer"),
    (lambda: Heartbeat(seq=MAX_SEQ + 1, uptime_s=1), "HB seq=65536: expected"),
    (lambda: Heartbeat(seq=True, uptime_s=1), "HB seq=True"),
    (lambda: Button(seq=1, button="hp 1", event="press"), "BTN btn='hp 1': expected 1..16"),
    (lambda: Reading(seq=1, sensor="e", value=Decimal(2), unit="bool"),
     "READ value='2' with unit=bool: expected 0 or 1"),
    (lambda: Reading(seq=1, sensor="e", value=Decimal("1.5"), unit="count"),
     "with unit=count: expected a whole number"),
    (lambda: Reading(seq=1, sensor="e", value=Decimal("NaN"), unit="dB"),
     "READ value=Decimal('NaN'): expected a decimal number"),
    (lambda: Reading(seq=1, sensor="e", value=Decimal("1E+30"), unit="dB"),
     "at most 20 characters"),
    (lambda: Reading(seq=1, sensor="e", value=1.5, unit="dB"),  # type: ignore[arg-type]
     "READ value=1.5"),
    (lambda: Fault(seq=1, code="spkmic", source="hp1", state="set"),
     "FAULT code=spkmic state=set: expected state pass or fail"),
    (lambda: Fault(seq=1, code="tamper", source="d", state="set", detail="a, b"),
     "(use ';' instead of a comma)"),
    (lambda: Hello(seq=0, device_id="b", firmware="1", protocol=1, capabilities=("btn", "btn")),
     "HELLO caps=('btn', 'btn'): expected 1..8 distinct words"),
    (lambda: Hello(seq=0, device_id="b", firmware="1", protocol=0, capabilities=("btn",)),
     "HELLO proto=0: expected a decimal integer 1..65535"),
    (lambda: Refuse(seq=0, protocol=1, reason="x" * 161), "REFUSE reason="),
    (lambda: Nak(seq=0, ref=1, code="nope", detail=""),  # type: ignore[arg-type]
     "NAK code='nope': expected one of unsupported, invalid, busy, failed"),
])
def test_an_invalid_field_cannot_make_a_frame(build: Callable[[], Frame], expected: str) -> None:
    with pytest.raises(FrameError) as caught:
        build()
    assert expected in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, BridgeError)
    assert caught.value.reason == "malformed"


# ------------------------------------------------------------------ rejections, by reason


def _one(data: bytes, direction: Direction = "uplink") -> tuple[list[Frame], Decoder]:
    decoder = Decoder(direction)
    return decoder.feed(data), decoder


def _only(decoder: Decoder, reason: str, count: int = 1) -> None:
    assert decoder.counters[reason] == count
    others = {k: v for k, v in decoder.counters.items() if k != reason and v}
    assert others == {}


def test_bad_crc_is_rejected_and_counted() -> None:
    frames, decoder = _one(b"$HB,7,up=3605*61EE\r\n")
    assert frames == []
    _only(decoder, "bad_crc")
    [rejection] = decoder.take_rejections()
    assert rejection.reason == "bad_crc"
    assert "CRC 61EE does not match the frame's 61EF" in rejection.detail
    assert rejection.data == b"$HB,7,up=3605*61EE\r\n"
    assert decoder.take_rejections() == []


def test_a_frame_of_exactly_the_limit_is_read_and_one_byte_more_is_oversize() -> None:
    def line(total: int) -> bytes:
        body = b"XX,1,pad=" + b"p" * (total - 1 - 9 - 7)
        return b"$%s*%04X\r\n" % (body, crc16(body))
    exact, over = line(MAX_FRAME_LEN), line(MAX_FRAME_LEN + 1)
    assert (len(exact), len(over)) == (MAX_FRAME_LEN, MAX_FRAME_LEN + 1)
    _, decoder = _one(exact)
    _only(decoder, "unknown_type")  # read as a whole, and parsed
    frames, decoder = _one(over + SENTINEL_WIRE)
    assert frames == [SENTINEL]
    assert decoder.counters["oversize"] == 1
    assert decoder.counters["garbage_bytes"] == 1  # the LF beyond the limit
    with pytest.raises(FrameError) as caught:
        parse_frame(over)
    assert caught.value.reason == "oversize"


def test_unknown_type_and_wrong_direction_are_rejected() -> None:
    _, decoder = _one(b"$PING,3*D6D0\r\n")
    _only(decoder, "unknown_type")
    lamp = encode(Lamp(seq=5, lamp="hp1", state="accepted"))
    _, decoder = _one(lamp, "uplink")
    _only(decoder, "wrong_direction")
    assert "adapter echoing" in decoder.take_rejections()[0].detail
    assert _one(lamp, "downlink")[0] == [Lamp(seq=5, lamp="hp1", state="accepted")]
    _, decoder = _one(encode(Button(seq=1, button="b", event="press")), "downlink")
    _only(decoder, "wrong_direction")


@pytest.mark.parametrize("line", [
    b"$HB,7,up=3605*61ef\r\n",            # lower-case CRC
    b"$HB,7,up=3605*61EF\n",              # LF without CR
    b"$HB,7,up=3605*61EF \r\n",           # junk after the CRC
    b"$HB,7,up=3605\r\n",                 # no CRC
    b"$*FFFF\r\n",                        # empty body
])
def test_broken_framing_is_malformed(line: bytes) -> None:
    frames, decoder = _one(line + SENTINEL_WIRE)
    assert frames == [SENTINEL]
    _only(decoder, "malformed")


@pytest.mark.parametrize("body", [
    "HB,07,up=1",                         # leading zero in seq
    "HB,65536,up=1",                      # seq out of range
    "HB,7,up=+1",                         # sign
    "HB,7,up=1,up=1",                     # repeated field
    "HB,7",                               # missing field
    "HB,7,up",                            # no '='
    "HB,7,up=",                           # empty value
    "BTN,1,ev=press,btn=hp1",             # out of order
    "BTN,1,btn=hp1,ev=PRESS",             # words are lower case
    "READ,1,sensor=s,value=1e3,unit=dB",  # exponent
    "READ,1,sensor=s,value=.5,unit=dB",   # no leading digit
    "READ,1,sensor=s,value=5.,unit=dB",   # no fraction digits
    "READ,1,sensor=s,value=1,unit=kg",    # unknown unit
    "FAULT,1,code=tamper,src=d,state=set,detail=",  # empty optional field
    "HB,7,up=1\t",                        # control character
    "HB,7,up=\u0661",                     # a non-ASCII digit
    "HB",                                 # no seq
])
def test_a_bad_field_with_a_good_crc_is_malformed(body: str) -> None:
    raw = body.encode()
    frames, decoder = _one(b"$%s*%04X\r\n" % (raw, crc16(raw)) + SENTINEL_WIRE)
    assert frames == [SENTINEL]
    _only(decoder, "malformed")


def test_a_new_start_mid_frame_truncates_it_and_decodes_the_next() -> None:
    frames, decoder = _one(b"$HB,8,up=36$HB,9,up=3607*32DA\r\n")
    assert frames == [Heartbeat(seq=9, uptime_s=3607)]
    _only(decoder, "truncated")
    assert decoder.take_rejections()[0].data == b"$HB,8,up=36"


def test_garbage_is_counted_per_byte_and_reset_drops_a_partial_frame() -> None:
    decoder = Decoder()
    assert decoder.feed(b"boot v1.4.2 ok\r\n$HB,1,up=2*81EC\r\n$HB,2,u") == [
        Heartbeat(seq=1, uptime_s=2)]
    assert decoder.counters["garbage_bytes"] == 16
    assert decoder.buffered == len(b"$HB,2,u")
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.counters["truncated"] == 1
    assert decoder.feed(b"p=3*0000\r\n") == []  # the rest of the dropped frame is garbage
    assert decoder.counters["garbage_bytes"] == 16 + 10
    assert [r.reason for r in decoder.take_rejections()] == [
        "garbage_bytes", "truncated", "garbage_bytes"]


def test_counters_start_at_zero_for_every_reason() -> None:
    assert dict(Decoder().counters) == dict.fromkeys(REJECT_REASONS, 0)


def test_kept_rejections_are_bounded_but_all_are_counted() -> None:
    decoder = Decoder()
    decoder.feed(b"$HB,7,up=3605*61EE\r\n" * 1000)
    assert decoder.counters["bad_crc"] == 1000
    assert len(decoder.take_rejections()) == Decoder.KEEP_REJECTIONS


# ------------------------------------------------------------------- properties of a stream


@given(data=st.binary(max_size=2000) | garbage, cuts=st.lists(st.integers(0, 10**6)))
@settings(max_examples=500)
def test_no_bytes_make_the_decoder_raise_or_grow(data: bytes, cuts: list[int]) -> None:
    directions: tuple[Direction, ...] = ("uplink", "downlink")
    for direction in directions:
        decoder = Decoder(direction)
        for frame in feed_in_chunks(decoder, data, cuts):
            assert parse_frame(encode(frame)) == frame


@given(frames=st.lists(uplink_frame, max_size=10), noise=st.lists(garbage, max_size=5),
       cuts=st.lists(st.integers(0, 10**6), max_size=20))
@settings(max_examples=300)
def test_how_the_bytes_are_split_into_reads_changes_nothing(
        frames: list[Frame], noise: list[bytes], cuts: list[int]) -> None:
    data = b"".join(itertools.chain.from_iterable(
        itertools.zip_longest([encode(f) for f in frames], noise, fillvalue=b"")))
    whole = Decoder()
    expected = whole.feed(data)
    split = Decoder()
    assert feed_in_chunks(split, data, cuts) == expected
    assert split.counters == whole.counters
    assert split.buffered == whole.buffered


@given(frames=st.lists(uplink_frame, min_size=1, max_size=12),
       splices=st.lists(st.tuples(st.integers(0, 10**6), garbage), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 10**6), max_size=10))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_spliced_anywhere_costs_only_the_frames_it_lands_in(
        frames: list[Frame], splices: list[tuple[int, bytes]], cuts: list[int]) -> None:
    frames = [dataclasses.replace(f, seq=i) for i, f in enumerate(frames)]  # tell them apart
    wire = [encode(f) for f in frames]
    flat = b"".join(wire)
    at = sorted((p % (len(flat) + 1), i, junk) for i, (p, junk) in enumerate(splices))
    stream, prev = bytearray(), 0
    for p, _, junk in at:
        stream += flat[prev:p] + junk
        prev = p
    stream += flat[prev:]
    # A frame is intact when no garbage went in between its first and its last byte.
    intact, start = [], 0
    for i, w in enumerate(wire):
        if not any(start < p < start + len(w) for p, _, _ in at):
            intact.append(i)
        start += len(w)

    decoder = Decoder()
    got = feed_in_chunks(decoder, bytes(stream), cuts)
    # Every intact frame comes out, in order, and nothing else but (rarely) a frame whose
    # bytes garbage did not really damage, such as a '$' spliced just after its own '$'.
    indices = [f.seq for f in got]
    assert indices == sorted(set(indices))
    assert [frames[i] for i in indices] == got
    assert set(intact) <= set(indices)


# ------------------------------------------------------------------------------ bit flips


@given(frame=any_frame, bits=st.sets(st.integers(0, 8 * MAX_FRAME_LEN - 1),
                                     min_size=1, max_size=8))
@settings(max_examples=1000)
def test_flipped_bits_never_pass_as_a_frame(frame: Frame, bits: set[int]) -> None:
    raw = encode(frame)
    corrupted = flip(raw, {b % (8 * len(raw)) for b in bits})
    assert corrupted != raw
    decoder = Decoder(direction_of(frame))
    # Nothing but the intact frame after it comes out: the corrupted one is dropped, and
    # the decoder is back in step.
    assert decoder.feed(corrupted + SENTINEL_WIRE) == [SENTINEL]


def _exhaustive(raw: bytes, flips: int) -> Iterator[bytes]:
    for bits in itertools.combinations(range(8 * len(raw)), flips):
        yield flip(raw, set(bits))


@pytest.mark.parametrize("frame", [
    Heartbeat(seq=1, uptime_s=2),
    Lamp(seq=5, lamp="hp1", state="accepted"),
    Reading(seq=20, sensor="snd1", value=Decimal("71.20"), unit="dB"),
], ids=lambda f: f.TYPE)
def test_every_one_and_two_bit_error_is_rejected(frame: Frame) -> None:
    raw = encode(frame)
    decoder = Decoder(direction_of(frame))
    cases = 0
    for flips in (1, 2):
        for corrupted in _exhaustive(raw, flips):
            cases += 1
            assert decoder.feed(corrupted + SENTINEL_WIRE) == [SENTINEL], corrupted
    n = 8 * len(raw)
    assert cases == n + n * (n - 1) // 2


@pytest.mark.slow
def test_a_million_random_bit_flips_accept_no_corrupted_frame() -> None:
    result = bit_flip_trials(1_000_000, seed=20240601)
    print(f"\nbit flips: {result.cases} cases, {result.accepted_corrupted} corrupted frames "
          f"accepted, {result.crc_matched} CRC matches by chance (all rejected by field "
          f"checks), {result.sentinel_lost} resync failures, {result.seconds:.1f} s")
    assert result.accepted_corrupted == 0
    assert result.sentinel_lost == 0
    assert sum(result.flips.values()) == 1_000_000
    assert set(result.flips) == set(range(1, 9))


# ---------------------------------------------------------------------------------- memory


CHUNK = 64 * 1024


def _bounded_feed(chunks: Iterator[bytes]) -> tuple[Decoder, int]:
    """Feed every chunk; the decoder and the tracemalloc peak of the whole run."""
    decoder = Decoder()
    tracemalloc.start()
    try:
        for chunk in chunks:
            assert decoder.feed(chunk) == []
            assert decoder.buffered < MAX_FRAME_LEN
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return decoder, peak


def test_100_mb_of_garbage_without_a_frame_start_keeps_memory_bounded() -> None:
    total = 100 * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        for _ in range(total // CHUNK):
            yield os.urandom(CHUNK).replace(b"$", b"#")
    decoder, peak = _bounded_feed(chunks())
    assert decoder.counters["garbage_bytes"] == total
    assert decoder.buffered == 0
    assert peak < 5 * 1024 * 1024, peak


def test_a_frame_start_that_never_ends_keeps_memory_bounded() -> None:
    total = 20 * 1024 * 1024
    filler = bytes(b for b in range(256) if b not in b"$\n") * (CHUNK // 254 + 1)

    def chunks() -> Iterator[bytes]:
        yield b"$"
        for _ in range(total // CHUNK):
            yield filler[:CHUNK]
    decoder, peak = _bounded_feed(chunks())
    assert decoder.counters["oversize"] == 1
    assert decoder.counters["garbage_bytes"] == total + 1 - MAX_FRAME_LEN
    assert peak < 5 * 1024 * 1024, peak


def test_random_bytes_in_random_reads_keep_memory_bounded() -> None:
    rng = random.Random(7)

    def chunks() -> Iterator[bytes]:
        for _ in range(20_000):
            yield rng.randbytes(rng.randint(1, 1024))
    decoder, peak = _bounded_feed(chunks())
    assert decoder.counters["garbage_bytes"] > 0
    assert peak < 5 * 1024 * 1024, peak


# ---------------------------------------------------------------------- sequence tracking


def hb(seq: int, up: int = 0) -> Heartbeat:
    """A heartbeat with this seq and uptime."""
    return Heartbeat(seq=seq, uptime_s=up)


def hello(seq: int) -> Hello:
    """A HELLO with this seq."""
    return Hello(seq=seq, device_id="b1", firmware="1.0", protocol=1, capabilities=("btn",))


def _kinds(frames: list[Frame]) -> tuple[list[SeqResult], SequenceTracker]:
    tracker = SequenceTracker()
    return [tracker.observe(f) for f in frames], tracker


def test_consecutive_seqs_are_ok_across_the_wrap() -> None:
    results, tracker = _kinds([hb(65534, 1), hb(65535, 2), hb(0, 3), hb(1, 4)])
    assert [r.kind for r in results] == ["first", "ok", "ok", "ok"]
    assert next_seq(65535) == 0
    assert next_seq(7) == 8
    assert tracker.counts["ok"] == 3


def test_a_jump_forward_is_a_gap_counting_the_lost_frames() -> None:
    results, tracker = _kinds([hb(10, 1), hb(14, 5), hb(32782, 6), hb(65534, 7), hb(2, 8),
                               hb(3, 9)])
    assert results == [SeqResult("first"), SeqResult("gap", 3), SeqResult("gap", 32767),
                       SeqResult("gap", 32751), SeqResult("gap", 3), SeqResult("ok")]
    assert (tracker.counts["gap"], tracker.counts["lost"]) == (4, 3 + 32767 + 32751 + 3)


def test_a_jump_of_more_than_half_the_range_is_a_seq_going_backwards() -> None:
    results, _ = _kinds([hb(10, 1), hb(10 + 32769, 2)])
    assert results[1] == SeqResult("reset")


def test_the_same_seq_again_is_a_duplicate_and_does_not_move_on() -> None:
    button = Button(seq=5, button="hp1", event="press")
    results, tracker = _kinds([hb(4, 1), button, button, Button(seq=6, button="hp1",
                                                                event="release")])
    assert [r.kind for r in results] == ["first", "ok", "duplicate", "ok"]
    assert tracker.counts["duplicate"] == 1
    assert tracker.last_seq == 6


def test_hello_zero_uptime_backwards_and_seq_backwards_are_resets() -> None:
    results, tracker = _kinds([
        hb(500, 600), hello(0),           # boot: HELLO 0
        hb(1, 1), hb(2, 2), hello(0),      # boot again: reset even right after a HELLO 0
        hello(0),                          # a board in a reboot loop
        hb(1, 1), hb(2, 5), hb(3, 0),      # uptime went backwards (its HELLO was lost)
        hb(4, 1), hb(1, 9),                # seq went backwards
        hb(2, 10), hb(2, 3),               # the same seq, but uptime went backwards: a reset
    ])
    assert [r.kind for r in results] == [
        "first", "reset", "ok", "ok", "reset", "reset", "ok", "ok", "reset", "ok", "reset",
        "ok", "reset"]
    assert tracker.counts["reset"] == 6
    assert tracker.counts["lost"] == 0


def test_a_hello_that_is_not_seq_zero_is_not_a_reset() -> None:
    results, _ = _kinds([hello(0), hello(1), hello(2), hb(3, 3)])
    assert [r.kind for r in results] == ["first", "ok", "ok", "ok"]


def test_forget_starts_over_without_counting() -> None:
    tracker = SequenceTracker()
    tracker.observe(hb(10, 100))
    tracker.forget()
    assert tracker.observe(hb(900, 50)) == SeqResult("first")
    assert tracker.counts["reset"] == 0
    assert tracker.counts["first"] == 2


@given(start=seqs, fates=st.lists(st.sampled_from(["send", "drop", "twice"]), min_size=1,
                                  max_size=300))
def test_the_tracker_counts_exactly_what_the_link_did(start: int, fates: list[str]) -> None:
    tracker = SequenceTracker()
    seq, first = start, True
    dropped = doubled = pending_drops = 0
    for up, fate in enumerate(fates):
        frame = hb(seq, up)
        seq = next_seq(seq)
        if fate == "drop":
            pending_drops += 1
            continue
        result = tracker.observe(frame)
        if first:
            assert result.kind == "first"
            first = False
        else:
            assert result == (SeqResult("gap", pending_drops) if pending_drops
                              else SeqResult("ok"))
            dropped += pending_drops
        pending_drops = 0
        if fate == "twice":
            assert tracker.observe(frame) == SeqResult("duplicate")
            doubled += 1
    assert tracker.counts["lost"] == dropped
    assert tracker.counts["duplicate"] == doubled
    assert tracker.counts["reset"] == 0


# ------------------------------------------------------------------- version negotiation


def test_a_board_speaking_this_version_is_welcomed() -> None:
    assert negotiate(hello(0), 0) == Welcome(seq=0, protocol=PROTOCOL_VERSION)
    check_protocol_version(1)


@pytest.mark.parametrize("version", [2, 65535])
def test_a_newer_version_is_refused_with_a_reason_a_technician_can_act_on(version: int) -> None:
    board = Hello(seq=0, device_id="b", firmware="9", protocol=version, capabilities=("btn",))
    answer = negotiate(board, 3)
    assert isinstance(answer, Refuse)
    assert answer.seq == 3
    assert answer.protocol == 1
    assert answer.reason == (f"protocol {version} is newer than this gateway speaks (1): "
                             "update the station gateway or flash board firmware that speaks "
                             "protocol 1")
    assert parse_frame(encode(answer)) == answer
    with pytest.raises(ProtocolVersionError) as caught:
        check_protocol_version(version)
    assert isinstance(caught.value, ValueError)
    assert caught.value.version == version


def test_a_newer_hello_still_decodes_so_that_it_can_be_refused() -> None:
    wire = b"$HELLO,0,id=b7,fw=3.0,proto=2,caps=btn+newthing*%04X\r\n" % crc16(
        b"HELLO,0,id=b7,fw=3.0,proto=2,caps=btn+newthing")
    [board] = Decoder().feed(wire)
    assert isinstance(board, Hello)
    assert isinstance(negotiate(board, 0), Refuse)


# -------------------------------------------------------------------------------- the docs


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", _doc(), re.MULTILINE | re.DOTALL)


def test_every_worked_example_in_the_doc_decodes_and_matches_its_hex() -> None:
    pairs = re.findall(r"^```frame\n(.*?)\n```\n\n```hex\n(.*?)```$", _doc(),
                       re.MULTILINE | re.DOTALL)
    assert len(pairs) == len(_blocks("frame")) == len(_blocks("hex"))
    shown = set()
    for line, hexdump in pairs:
        wire = line.encode("ascii") + b"\r\n"
        frame = parse_frame(wire)
        assert encode(frame) == wire
        assert bytes.fromhex(hexdump) == wire, line
        shown.add((frame.TYPE, direction_of(frame)))
    assert {t for t, _ in shown} == set(FRAME_TYPES)


def test_every_frame_quoted_in_the_doc_is_true() -> None:
    table = _doc().split("## What the gateway rejects")[1].split("\n## ")[0]
    quoted = re.findall(r"\$[A-Z]+,[^*$`\n]*\*[0-9A-F]{4}", _doc().replace(table, ""))
    assert len(quoted) >= 20
    for line in quoted:
        wire = line.encode("ascii") + b"\r\n"
        assert encode(parse_frame(wire)) == wire, line


def test_the_docs_rejection_table_gives_the_reason_the_decoder_counts() -> None:
    table = _doc().split("## What the gateway rejects")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([^`]+)` \| `(\w+)` \|", table, re.MULTILINE)
    assert {reason for _, reason in rows} == set(REJECT_REASONS) - {"oversize"}
    details = []
    for sent, reason in rows:
        decoder = Decoder("uplink")
        decoder.feed(sent.encode("ascii") + b"\r\n")
        decoder.reset()
        assert decoder.counters[reason] >= 1, (sent, dict(decoder.counters))
        assert sum(decoder.counters.values()) == decoder.counters[reason], sent
        details += [r.detail for r in decoder.take_rejections()]
    # The log line the doc quotes is the one the decoder writes.
    assert "READ value='2' with unit=bool: expected 0 or 1" in details
    assert "`READ value='2' with unit=bool: expected 0 or 1`" in _doc()


def test_the_docs_limits_are_the_codes() -> None:
    doc = _doc()
    assert f"| frame length, `$` to LF | {MAX_FRAME_LEN} bytes |" in doc
    assert "is **0x29B1**" in doc
    assert f"This page is\nversion {PROTOCOL_VERSION}" in doc


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to check the doc's C")
def test_the_docs_c_code_builds_the_same_frames(tmp_path: Path) -> None:
    library, usage = _blocks("c")
    body = "\n".join("    " + line for line in usage.splitlines())
    program = (library + "\nstatic void uart_write(const char *data, size_t len)\n{\n"
               "    fwrite(data, 1, len, stdout);\n}\n\nint main(void)\n{\n"
               '    printf("%04X\\n", crc16((const uint8_t *)"123456789", 9));\n'
               "    uint16_t seq = 65534;\n    unsigned long uptime_s = 4294967295UL;\n"
               f"    {{\n{body}\n    }}\n    {{\n{body}\n    }}\n    {{\n{body}\n    }}\n"
               "    return 0;\n}\n")
    source = tmp_path / "frame.c"
    source.write_text(program)
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-o", str(tmp_path / "frame"), str(source)], check=True, timeout=60)
    out = subprocess.run([str(tmp_path / "frame")], capture_output=True, check=True,
                         timeout=10).stdout
    expected = b"29B1\n" + b"".join(encode(Heartbeat(seq=s, uptime_s=2**32 - 1))
                                    for s in (65534, 65535, 0))
    assert out == expected


# ------------------------------------------------------------------- the technician's tool


def test_the_tool_adds_the_crc_to_a_hand_written_frame(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert cli_main(["frame", "HB,7,up=3605"]) == 0
    assert capsys.readouterr().out == "$HB,7,up=3605*61EF\n"
    assert cli_main(["frame", "--crlf", "$WELCOME,0,proto=1"]) == 0
    assert capsys.readouterr().out == "$WELCOME,0,proto=1*C538\r\n"
    assert cli_main(["frame", "HB,7,up=03605"]) == 2
    assert "HB up='03605': expected a decimal integer" in capsys.readouterr().err


def test_the_tool_decodes_a_capture_with_reasons_in_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "board.log"
    capture.write_bytes(b"boot\r\n$HB,1,up=2*81EC\r\n$HB,2,up=3*0000\r\n$HB,3,u")
    assert cli_main(["decode", str(capture)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "! garbage_bytes: 6 bytes outside any frame (no '$' before them): b'boot\\r\\n'",
        "Heartbeat(seq=1, uptime_s=2)",
        "! bad_crc: CRC 0000 does not match the frame's 5F2D (corrupted on the line): "
        "b'$HB,2,up=3*0000\\r\\n'",
        "! truncated: partial frame dropped: link reset: b'$HB,3,u'",
        "# 1 frames; rejected: bad_crc 1, oversize 0, unknown_type 0, wrong_direction 0, "
        "malformed 0, truncated 1, garbage_bytes 6",
    ]


def test_the_bridge_never_imports_pyserial() -> None:
    code = ("import sys, firmware_bridge, firmware_bridge.__main__; "
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('serial', 'serial_asyncio_fast', 'asyncio', 'socket')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=30)
    assert result.stdout.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "firmware_bridge", "--help"],
                               capture_output=True, text=True, check=True, timeout=30).stdout
    assert "frame" in help_text
    assert "decode" in help_text
