"""CPU time of processes and of the whole machine over a stretch of a benchmark (Linux ``/proc``).

``CpuMeter(groups)`` takes named groups of process ids (``{"web": [pid, ...], ...}``); ``start()``
and ``stop()`` read each process's user + system time and the machine's busy and total time, and
``shares()`` gives each group's CPU seconds as a share of one core over the wall time between
the two readings, the machine's busy share of all its cores, and the load average at the end.
A process that is gone by ``stop()`` counts what it used until its last reading (none: 0). On a
system without ``/proc`` every figure is 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (None: no such process, or no ``/proc``)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return 0, 0
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


@dataclass
class CpuMeter:
    groups: Mapping[str, Iterable[int]]
    _start: dict[int, float] = field(default_factory=dict)
    _end: dict[int, float] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: tuple[int, int] = (0, 0)
    _machine_end: tuple[int, int] = (0, 0)
    load: float = 0.0

    def _pids(self) -> set[int]:
        return {pid for pids in self.groups.values() for pid in pids}

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._machine = machine_ticks()
        for pid in self._pids():
            seconds = process_seconds(pid)
            if seconds is not None:
                self._start[pid] = seconds

    def stop(self, late: Mapping[str, Iterable[int]] | None = None) -> None:
        """Read again. ``late``: processes that joined a group meanwhile (counted from 0)."""
        self._machine_end = machine_ticks()
        self._wall = time.perf_counter() - self._wall
        if late:
            groups = {name: list(pids) for name, pids in self.groups.items()}
            for name, pids in late.items():
                groups[name] = sorted(set(groups.get(name, [])) | set(pids))
            self.groups = groups
        for pid in self._pids():
            seconds = process_seconds(pid)
            if seconds is not None:
                self._end[pid] = seconds
        self.load = load_average()

    def seconds_of(self, pid: int) -> float:
        start = self._start.get(pid, 0.0)
        return self._end.get(pid, start) - start

    def seconds(self, name: str) -> float:
        return sum(self.seconds_of(pid) for pid in self.groups[name])

    def shares(self) -> dict[str, float]:
        """Each group's CPU as a share of one core (1.0 = one core busy all the time)."""
        wall = max(self._wall, 1e-9)
        return {name: self.seconds(name) / wall for name in self.groups}

    @property
    def wall(self) -> float:
        return self._wall

    @property
    def machine_busy(self) -> float:
        """The share of all the machine's cores that was busy (1.0 = all of them)."""
        busy = self._machine_end[0] - self._machine[0]
        total = self._machine_end[1] - self._machine[1]
        return busy / total if total else 0.0
