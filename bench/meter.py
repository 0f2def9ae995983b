"""CPU time and memory of another process, read from /proc (Linux), sampled over time."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """Unix time of the reading (the same clock the sinks stamp acceptances with)."""
    cpu: float
    """User plus system CPU seconds of the process so far, all threads included."""
    rss: int
    """Resident set size in bytes."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: count fields after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the service processes under ``run --processes``)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its live children (None once ``pid`` is gone)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in children(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (nor waiting for I/O) since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS


def memory(pid: int) -> tuple[int, int] | None:
    """(current RSS, peak RSS) of ``pid`` in bytes from VmRSS and VmHWM; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, amount, _unit = line.split()
            values[name] = int(amount) * 1024
    return values.get("VmRSS:", 0), values.get("VmHWM:", 0)


class ProcessMeter:
    """Samples one process every ``interval`` seconds while ``run()`` is awaited.

    The peak RSS is the kernel's high-water mark (VmHWM), not the largest sample.
    """

    def __init__(self, pid: int, *, interval: float = 0.1, tree: bool = False) -> None:
        self.pid = pid
        self._tree = tree
        self._interval = interval
        self.samples: list[Sample] = []
        self.peak_rss = 0

    def sample(self) -> Sample | None:
        cpu = tree_cpu_seconds(self.pid) if self._tree else cpu_seconds(self.pid)
        mem = memory(self.pid)
        if cpu is None or mem is None:
            return None
        rss, peak = mem
        if self._tree:  # the sum of each process's own high-water mark
            for child in children(self.pid):
                child_rss, child_peak = memory(child) or (0, 0)
                rss, peak = rss + child_rss, peak + child_peak
        reading = Sample(at=time.time(), cpu=cpu, rss=rss)
        self.peak_rss = max(self.peak_rss, peak)
        self.samples.append(reading)
        return reading

    async def run(self) -> None:
        """Sample until cancelled or until the process is gone."""
        while True:
            if self.sample() is None:
                return
            await asyncio.sleep(self._interval)

    def cpu_at(self, when: float) -> float:
        """CPU seconds at ``when``, interpolated between the two samples around it."""
        samples = self.samples
        if not samples:
            raise ValueError(f"no samples of process {self.pid}")
        times = [s.at for s in samples]
        index = bisect.bisect_left(times, when)
        if index == 0:
            return samples[0].cpu
        if index >= len(samples):
            return samples[-1].cpu
        before, after = samples[index - 1], samples[index]
        span = after.at - before.at
        share = 0.0 if span <= 0 else (when - before.at) / span
        return before.cpu + share * (after.cpu - before.cpu)

    def cpu_between(self, start: float, end: float) -> float:
        return max(self.cpu_at(end) - self.cpu_at(start), 0.0)


class MachineMeter(ProcessMeter):
    """The whole machine's busy CPU seconds (every process), sampled the same way."""

    def __init__(self, *, interval: float = 0.1) -> None:
        super().__init__(0, interval=interval)

    def sample(self) -> Sample | None:
        reading = Sample(at=time.time(), cpu=machine_busy_seconds(), rss=0)
        self.samples.append(reading)
        return reading
