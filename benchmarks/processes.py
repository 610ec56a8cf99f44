"""Memory of a running `bentoml serve`, per process: what the soak and the face-memory runs record.

BentoML runs the API and every runner as worker processes under one arbiter; each worker's
command line names its service (`--service-name FaceAnalyzer`). `RssSampler` reads the resident
set size of each one every few seconds in a background thread, so a run can say which process
grew, by how much, and when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

MIB = 1024 * 1024


def service_processes(arbiter_pid: int) -> dict[str, psutil.Process]:
    """The worker processes under a `bentoml serve` arbiter, by service name (one worker each;
    a second worker of a service is named `Service#2`)."""
    found: dict[str, psutil.Process] = {}
    for child in psutil.Process(arbiter_pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "--service-name" not in command:
            continue
        name = command[command.index("--service-name") + 1]
        key, number = name, 2
        while key in found:
            key, number = f"{name}#{number}", number + 1
        found[key] = child
    return found


def rss_mib(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """Resident memory of each process in MiB; a process that is gone reads 0."""
    sizes = {}
    for name, process in processes.items():
        try:
            sizes[name] = round(process.memory_info().rss / MIB, 1)
        except psutil.Error:
            sizes[name] = 0.0
    return sizes


def core_counters(arbiter_pid: int, cpus: Sequence[int]) -> dict[str, float]:
    """Cumulative CPU seconds on the server's cores: used by the served processes (the arbiter
    and every worker), busy in all (anything else on those cores too), and stolen by the
    hypervisor. Differences between two readings tell whether a slow minute was the service's
    own work or something else on its cores."""
    per_cpu = psutil.cpu_times(percpu=True)
    busy = steal = 0.0
    for cpu in cpus:
        times = per_cpu[cpu]
        busy += times.user + times.nice + times.system + times.irq + times.softirq
        steal += getattr(times, "steal", 0.0)
    served = 0.0
    try:
        arbiter = psutil.Process(arbiter_pid)
        for process in [arbiter, *arbiter.children(recursive=True)]:
            try:
                used = process.cpu_times()
            except psutil.Error:
                continue
            served += used.user + used.system
    except psutil.Error:
        pass
    return {"served_cpu_s": served, "busy_cpu_s": busy, "steal_cpu_s": steal}


def core_use(
    samples: Sequence[dict[str, Any]], start_s: float, end_s: float, cores: int
) -> dict[str, float] | None:
    """Shares (%) of the server's cores between two sample times, from `core_counters`
    readings in the samples: the service's own work, anything else, and stolen time."""
    inside = [s for s in samples if "busy_cpu_s" in s and start_s < s["t"] <= end_s]
    before = [s for s in samples if "busy_cpu_s" in s and s["t"] <= start_s]
    window = ([before[-1]] if before else []) + inside
    if len(window) < 2:
        return None
    first, last = window[0], window[-1]
    seconds = (last["t"] - first["t"]) * cores
    if seconds <= 0:
        return None

    def share(key: str) -> float:
        return max(0.0, last[key] - first[key]) / seconds

    served, busy = share("served_cpu_s"), share("busy_cpu_s")
    return {
        "served_pct": round(100 * served, 1),
        "other_pct": round(100 * max(0.0, busy - served), 1),
        "steal_pct": round(100 * share("steal_cpu_s"), 1),
    }


class RssSampler:
    """Samples every service process's RSS every `interval_s` seconds until stopped.

    Each sample is `{"t": seconds since start, "rss_mib": {service: MiB}, **progress()}`:
    `progress` adds what the caller counts at that moment (requests sent, errors). Processes
    are looked up again at every sample, so a replaced worker is followed.
    """

    def __init__(
        self,
        arbiter_pid: int,
        interval_s: float = 2.0,
        progress: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.arbiter_pid = arbiter_pid
        self.interval_s = interval_s
        self.progress = progress or dict
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> dict[str, Any]:
        entry = {
            "t": round(time.monotonic() - self._started, 2),
            "rss_mib": rss_mib(service_processes(self.arbiter_pid)),
            **self.progress(),
        }
        self.samples.append(entry)
        return entry

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def growth_after_warmup(
    samples: list[dict[str, Any]], warm: Callable[[dict[str, Any]], bool]
) -> dict[str, dict[str, float]]:
    """Per service: the highest RSS until the first sample where `warm(sample)` holds (the
    warm-up: models loading, allocator pools filling, the first large inputs), the highest
    RSS after it, and the last sample, taken once every request was answered.

    `growth_pct` compares the last with the highest of the warm-up: memory the process still
    holds when the work is done, which a leak raises and a burst of queued requests does not.
    `peak_growth_pct` compares the highest after the warm-up with it (bursts included)."""
    start = next((i for i, sample in enumerate(samples) if warm(sample)), None)
    if start is None:
        return {}
    summary = {}
    for name in samples[start]["rss_mib"]:
        values = [sample["rss_mib"].get(name, 0.0) for sample in samples]
        before, after, final = max(values[: start + 1]), max(values[start:]), values[-1]
        summary[name] = {
            "warmup_peak_mib": before,
            "peak_after_warmup_mib": after,
            "final_mib": final,
            "growth_pct": _percent(final, before),
            "peak_growth_pct": _percent(after, before),
        }
    return summary


def _percent(value: float, reference: float) -> float:
    return round(100 * (value - reference) / reference, 1) if reference else 0.0
