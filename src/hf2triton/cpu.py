"""How busy the machine is, from /proc: CPU flags, other processes' CPU use during a measurement.

These machines are shared: a benchmark cell measured while other processes ran can
move by 20 %. :class:`CpuMeter` samples ``/proc/stat`` (all CPU time) and the CPU time
of the processes we account for (this process, the tritonserver process group and
its python-backend stubs) and reports the rest as *other* load, in percent of all
cores. Linux only; elsewhere the figures are NaN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSample:
    total: int  # jiffies, all cores
    busy: int
    own: int  # jiffies of the accounted processes


@dataclass(frozen=True)
class CpuUsage:
    busy_pct: float  # of all cores
    other_pct: float  # busy time not spent by the accounted processes


def cpu_flags() -> tuple[str, ...]:
    """The vector-instruction flags that change ONNX Runtime speed (AVX2, AVX-512, VNNI)."""
    try:
        text = (PROC / "cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return tuple(flag for flag in wanted if flag in flags)


def _stat_fields(pid: int) -> list[str]:
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_jiffies(pid: int) -> int:
    """utime + stime of ``pid`` and its reaped children; 0 when it is gone."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0
    return sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group ``pgid`` (tritonserver and its stubs)."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[2]) == pgid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def listening_pid(port: int) -> int | None:
    """The pid of a process of ours listening on TCP ``port`` (IPv4 or IPv6), if any."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


class CpuMeter:
    """Sample before and after a measurement: ``meter.usage(before, meter.sample())``."""

    def __init__(self, server_pgid: int | None = None) -> None:
        self.server_pgid = server_pgid

    def sample(self) -> CpuSample:
        try:
            fields = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return CpuSample(0, 0, 0)
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
        busy = total - fields[3] - fields[4]
        pids = {os.getpid()}
        if self.server_pgid is not None:
            pids.update(group_pids(self.server_pgid))
        return CpuSample(total, busy, sum(process_jiffies(pid) for pid in pids))

    @staticmethod
    def usage(before: CpuSample, after: CpuSample) -> CpuUsage:
        total = after.total - before.total
        if total <= 0:
            return CpuUsage(float("nan"), float("nan"))
        busy = after.busy - before.busy
        other = max(0, busy - (after.own - before.own))
        return CpuUsage(100.0 * busy / total, 100.0 * other / total)


def meter_for_port(port: int | None) -> CpuMeter:
    """A meter that accounts for the server listening on ``port`` (and its stubs) when found."""
    pid = listening_pid(port) if port else None
    if pid is None:
        return CpuMeter()
    try:
        return CpuMeter(os.getpgid(pid))
    except OSError:
        return CpuMeter()
