"""Bench tools for a technician: add the CRC to a hand-written frame, decode a capture.

    python -m firmware_bridge frame [--crlf] 'LAMP,1,lamp=hp1,state=accepted'
    python -m firmware_bridge decode capture.log       (or from stdin)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import BinaryIO

from firmware_bridge.codec import Decoder, Rejection, crc16, parse_frame
from firmware_bridge.errors import FrameError
from firmware_bridge.frames import Direction


def frame_line(body: str) -> str:
    """`$<body>*<CRC>` for a body such as `HB,7,up=3605`, or `FrameError` if it is invalid."""
    body = body.removeprefix("$")
    try:
        raw = body.encode("ascii")
    except UnicodeEncodeError as exc:
        raise FrameError(f"frame {body!r} has non-ASCII characters") from exc
    line = b"$%s*%04X" % (raw, crc16(raw))
    parse_frame(line + b"\r\n")
    return line.decode("ascii")


def decode_stream(stream: BinaryIO, direction: Direction) -> None:
    """Decode `stream` to its end, printing each frame and each rejection, then the counts."""
    decoder = Decoder(direction)
    while chunk := stream.read(4096):
        # Line by line, so that rejections print in order with the frames around them.
        for piece in chunk.splitlines(keepends=True):
            frames = decoder.feed(piece)
            _print_rejections(decoder.take_rejections())
            for frame in frames:
                print(repr(frame))
    decoder.reset()
    _print_rejections(decoder.take_rejections())
    counts = ", ".join(f"{k} {v}" for k, v in decoder.counters.items())
    print(f"# {decoder.decoded} frames; rejected: {counts}")


def _print_rejections(rejections: list[Rejection]) -> None:
    for rejection in rejections:
        print(f"! {rejection.reason}: {rejection.detail}: {rejection.data!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    frame = sub.add_parser("frame", help="print a frame with its CRC, ready to paste")
    frame.add_argument("body", help="the frame without $ and CRC, e.g. 'HB,7,up=3605'")
    frame.add_argument("--crlf", action="store_true",
                       help="end the line with CR LF, to send it to a board as it is")
    decode = sub.add_parser("decode", help="decode captured bytes (a file, or stdin)")
    decode.add_argument("file", nargs="?", help="capture file (default: stdin)")
    decode.add_argument("--downlink", action="store_true",
                        help="the bytes were sent by the gateway (default: sent by a board)")
    args = parser.parse_args(argv)
    if args.command == "frame":
        try:
            line = frame_line(args.body)
        except FrameError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.crlf:
            sys.stdout.write(line + "\r\n")
            sys.stdout.flush()
        else:
            print(line)
        return 0
    direction: Direction = "downlink" if args.downlink else "uplink"
    if args.file is None:
        decode_stream(sys.stdin.buffer, direction)
    else:
        with open(args.file, "rb", buffering=0) as stream:
            decode_stream(stream, direction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
