"""Progress for long work: a rich bar on a terminal, nothing when stderr is not one."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress(description: str, total: float, *,
             enabled: bool | None = None) -> Iterator[Callable[[float], None]]:
    """A bar for `total` units of work; yields `advance(units)`. Quiet off a terminal."""
    show = sys.stderr.isatty() if enabled is None else enabled
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not show, transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(units: float) -> None:
            bar.advance(task, units)

        yield advance
