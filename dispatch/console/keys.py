"""Terminal bytes in, key names out, with no I/O: the first stage of the interactive console."""

from __future__ import annotations

import contextlib

_SEQUENCES = {b"\x1b[A": "up", b"\x1b[B": "down", b"\x1bOA": "up", b"\x1bOB": "down"}
_CONTROL = {0x0D: "enter", 0x0A: "enter", 0x7F: "backspace", 0x08: "backspace"}


class KeyReader:
    """Terminal bytes in, key names out: `up`, `down`, `enter`, `esc`, `backspace`, or the
    character typed. Incomplete sequences wait for the next `feed`; `flush` ends a lone ESC."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        """Keys completed by `data`."""
        self._buf += data
        keys: list[str] = []
        while self._buf:
            step = _next_key(self._buf)
            if step is None:
                break  # an incomplete sequence or character: wait for more
            size, name = step
            self._buf = self._buf[size:]
            if name is not None:
                keys.append(name)
        return keys

    @property
    def pending(self) -> bool:
        """Bytes wait for the rest of a sequence (or for `flush`)."""
        return bool(self._buf)

    def flush(self) -> list[str]:
        """No more bytes came: a pending lone ESC is the Escape key."""
        pending, self._buf = self._buf, b""
        return ["esc"] if pending == b"\x1b" else []


def _next_key(buf: bytes) -> tuple[int, str | None] | None:
    """(bytes used, key or None if they make no key) at the start of `buf`; None if incomplete."""
    if buf[0] == 0x1B:
        return _escape(buf)
    if buf[0] < 0x80:
        if buf[0] in _CONTROL:
            return 1, _CONTROL[buf[0]]
        return 1, chr(buf[0]) if buf[0] >= 0x20 else None
    return _utf8(buf)


def _escape(buf: bytes) -> tuple[int, str | None] | None:
    """An arrow key (or another CSI/SS3 sequence, dropped) or a plain ESC; None if incomplete."""
    if len(buf) == 1:
        return None  # ESC alone, or the start of an arrow key: wait for more
    if buf[1] in b"[O":
        end = _sequence_end(buf)
        if end is None:
            return None
        if end > 0:
            return end, _SEQUENCES.get(buf[:end])
    return 1, "esc"


def _utf8(buf: bytes) -> tuple[int, str | None] | None:
    """One UTF-8 character (None if it does not decode); None if incomplete."""
    size = 2 if buf[0] >= 0xC0 else 1
    size = 3 if buf[0] >= 0xE0 else size
    size = 4 if buf[0] >= 0xF0 else size
    if len(buf) < size:
        return None
    text = None
    with contextlib.suppress(UnicodeDecodeError):
        text = buf[:size].decode()
    return size, text


def _sequence_end(buf: bytes) -> int | None:
    """Length of the CSI/SS3 sequence at the start of `buf`; None if incomplete, 0 if not one."""
    if buf[1:2] == b"O":
        return 3 if len(buf) >= 3 else None
    for i in range(2, len(buf)):
        if 0x40 <= buf[i] <= 0x7E:
            return i + 1
        if not 0x20 <= buf[i] <= 0x3F:
            return 0
    return None
