"""Running a console command: status lines on stderr, and an asyncio run that ends cleanly on
SIGINT/SIGTERM or, for scripts, when the supervising process closes stdin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from dispatch.errors import ConsoleError


def say(text: str) -> None:
    """One status line on stderr, flushed."""
    print(f"stationgw dispatch: {text}", file=sys.stderr, flush=True)


def is_pipe(fd: int) -> bool:
    """The file descriptor is a pipe or a socket (not a terminal, file or /dev/null)."""
    with contextlib.suppress(OSError):
        return stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)
    return False


def run(main: Coroutine[Any, Any, int], *, stop_on_stdin_eof: bool) -> int:
    """Run until `main` returns, SIGINT/SIGTERM, or (if asked and stdin is a pipe) its EOF."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
        watching = stop_on_stdin_eof and is_pipe(0)
        if watching:  # a supervising process stops us by closing the pipe
            _cancel_on_stdin_eof(loop, task)
        try:
            return await task
        except asyncio.CancelledError:
            return 0
        finally:
            if watching:
                loop.remove_reader(0)

    try:
        return asyncio.run(runner())
    except ConsoleError as exc:
        say(str(exc))
        return 1


def _cancel_on_stdin_eof(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    """Cancel `task` when stdin reaches EOF (or fails)."""

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            task.cancel()

    loop.add_reader(0, on_stdin)
