"""What a process costs, read from /proc: CPU seconds and memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile and RssShmem of a process in KiB (/proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(m.group(1)) if (m := re.search(rf"{key}:\s*(\d+)", status)) else 0
        for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    }


class CpuMeter:
    """CPU seconds used by this process, the broker and the subscriber over a span."""

    def __init__(self, **pids: int) -> None:
        self.pids = {"self": os.getpid(), **pids}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {
            name: proc_cpu_s(pid) - self._start[name] for name, pid in self.pids.items()
        }
