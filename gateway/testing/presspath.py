"""Follow one press through the gateway, from the GPIO edge to the PUBACK that deletes its
row and lights the rider's lamp "sent": every gateway function it runs, and the modules.

    python -m gateway.testing.presspath           # the summary
    python -m gateway.testing.presspath --calls   # and every call, in order

A gateway runs in this process on gpiozero's mock pins against a throwaway Mosquitto. Once
it is connected and quiet, a profiler (`sys.setprofile`, and `threading.setprofile` for the
outbox's worker thread) records every call into `gateway/` while one help point is tapped,
until its lamp shows "sent" and the outbox has deleted the row. Calls into the standard
library and other packages are not counted. Whatever else the loop runs in that window (the
retained open-alerts message the new alert causes, say) is counted and listed.

"Entered" counts the calls into a module from another one: how often the path comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import gateway
from gateway.daemon import Gateway
from gateway.testing.config import mock_help_points, station_config
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto, free_port

ROOT = Path(gateway.__file__).parent
LEFT_OUT = (ROOT / "testing",)  # this tool and its helpers
WAIT_S = 20.0


def _module(path: str) -> str | None:
    """`path` as a gateway module's dotted name, or None if it is not one we count."""
    file = Path(path)
    if not file.is_relative_to(ROOT) or any(file.is_relative_to(p) for p in LEFT_OUT):
        return None
    parts = file.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Trace:
    """The calls recorded while `recording` is set (from any thread)."""

    recording: bool = False
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)  # module, name, caller
    deleted: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        if not self.recording or event not in ("call", "return"):
            return
        module = _module(frame.f_code.co_filename)
        if module is None:
            return
        name = frame.f_code.co_qualname
        if event == "return":
            if name == "Outbox.delivered":  # the row is gone from the store
                self.deleted.set()
            return
        back = frame.f_back
        caller = _module(back.f_code.co_filename) if back is not None else None
        with self._lock:
            self.calls.append((module, name, caller))

    def summary(self) -> tuple[int, int, int, Counter[str]]:
        """(calls, distinct functions, modules, entries into each module from another)."""
        entered: Counter[str] = Counter(m for m, _, caller in self.calls if caller != m)
        functions = {(m, name) for m, name, _ in self.calls}
        return len(self.calls), len(functions), len({m for m, _ in functions}), entered


async def trace_one_press(folder: Path) -> Trace:
    """Run a gateway, tap hp-1 once, and record the calls until its row is deleted."""
    trace = Trace()
    port = free_port()
    with Mosquitto(port):
        config = station_config(folder, [f"mqtt://127.0.0.1:{port}"], gpio_pin_factory="mock",
                                help_points=mock_help_points(1))
        threading.setprofile(trace.hook)  # before the outbox's worker thread starts
        sys.setprofile(trace.hook)
        try:
            async with running(Gateway(config), connected_within_s=WAIT_S) as gw:
                assert gw.help_points is not None
                unit = gw.help_points.units["hp-1"]
                await asyncio.sleep(1.0)  # let the start-up messages go
                trace.recording = True
                unit.button.pin.drive_low()
                await asyncio.sleep(0.15)
                unit.button.pin.drive_high()
                deadline = time.monotonic() + WAIT_S
                while unit.lamp.alert_state != "sent" or not trace.deleted.is_set():
                    if time.monotonic() > deadline:
                        raise SystemExit("the press was not delivered within "
                                         f"{WAIT_S:g} s: is mosquitto installed?")
                    await asyncio.sleep(0.005)
                trace.recording = False
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    return trace


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", action="store_true", help="list every call, in order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="presspath-") as folder:
        trace = asyncio.run(trace_one_press(Path(folder)))
    calls, functions, modules, entered = trace.summary()
    if args.calls:
        for module, name, caller in trace.calls:
            print(f"{module}:{name}" + ("" if caller == module else f"   <- {caller}"))
        print()
    print(f"one press, edge to deleted row: {calls} calls of {functions} gateway functions "
          f"in {modules} modules")
    for module, n in sorted(entered.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {module}: entered {n} time(s)")
    woken = Counter(f"{m}:{name}" for m, name, caller in trace.calls if caller is None)
    print("entered from outside the gateway (the event loop resuming a task, a callback, "
          "a thread):")
    for name, n in sorted(woken.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {name}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
