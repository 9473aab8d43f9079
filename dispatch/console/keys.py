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
            buf = self._buf
            if buf[0] == 0x1B:
                if len(buf) == 1:
                    break  # ESC alone, or the start of an arrow key: wait for more
                if buf[1] in b"[O":
                    end = _sequence_end(buf)
                    if end is None:
                        break
                    if end > 0:
                        self._buf = buf[end:]
                        name = _SEQUENCES.get(buf[:end])
                        if name is not None:
                            keys.append(name)
                        continue
                keys.append("esc")
                self._buf = buf[1:]
                continue
            if buf[0] < 0x80:
                self._buf = buf[1:]
                if buf[0] in _CONTROL:
                    keys.append(_CONTROL[buf[0]])
                elif buf[0] >= 0x20:
                    keys.append(chr(buf[0]))
                continue
            size = 2 if buf[0] >= 0xC0 else 1
            size = 3 if buf[0] >= 0xE0 else size
            size = 4 if buf[0] >= 0xF0 else size
            if len(buf) < size:
                break
            self._buf = buf[size:]
            with contextlib.suppress(UnicodeDecodeError):
                keys.append(buf[:size].decode())
        return keys

    @property
    def pending(self) -> bool:
        """Bytes wait for the rest of a sequence (or for `flush`)."""
        return bool(self._buf)

    def flush(self) -> list[str]:
        """No more bytes came: a pending lone ESC is the Escape key."""
        pending, self._buf = self._buf, b""
        return ["esc"] if pending == b"\x1b" else []


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
