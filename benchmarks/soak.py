"""`make soak`: every family at once, at 70% of the measured capacity, for 30 minutes, against
the real `bentoml serve`; errors, p99 per minute and the RSS of every process recorded.

1. Capacity: each path alone, one client in a closed loop (requests one at a time, as the
   soak's sparse arrivals reach the server: batches of one), for a few seconds and at least
   40 requests (a 2048 px photo costs many times a 64 px one: a few requests misjudge a
   path's cost), with the soak's own requests
   (images of varied sizes and formats: 64-1024 px a side for /flowers, 64-2048 px for /face
   and /super; each path draws from 256 bodies made in advance, which a background thread
   keeps replacing with new sizes, so sizes keep changing without the client's image work
   slowing the load).
2. Calibration: all paths at once for a short while at `load x capacity_p / number of paths`
   requests per second (path p), reading how much of the server's cores the service used.
   Paths measured alone add up to less than the same paths mixed (processes taking turns on
   one core cost more than one at a time: runs at a nominal 70% used 85-97% of the core, and
   /face's queue then grew without end). When the mix used more than `load`, every rate is
   scaled down by the same factor, so the soak runs at `load` of the core as measured.
3. Load: all paths at once, open loop (Poisson arrivals), at the calibrated rates: each path
   gets an equal share of the server's time and together they use `load` (70%) of it.
4. Every minute: requests, errors, p99 per path, and how the server's cores were used (the
   service's own work, anything else on them, time stolen by the hypervisor: a slow minute
   is then the service's or its neighbours'); every 5 s: the RSS of each process.
   Goal: 0 errors, < 10% RSS growth after the warm-up (the first 10% of the run, at least a
   minute).

    python -m benchmarks.soak                 # 30 minutes (~34 with capacity and calibration)
    python -m benchmarks.soak --minutes 3     # the short version (tests/integration/test_soak.py)

Writes benchmarks/results/soak-<date>.json and soak-latest.md (with --minutes below 30:
soak-short-<date>.json and soak-short-latest.md). The server and the load generator are
pinned to separate CPUs as in benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from benchmarks import servers
from benchmarks.paths import antibiotics_body, falsetrue_body, heatflow_body
from benchmarks.processes import RssSampler, core_counters, core_use, growth_after_warmup
from benchmarks.run import RESULTS, prepare_store, write_results
from benchmarks.stats import latency_summary
from benchmarks.varied_images import varied_b64

FULL_MINUTES = 30.0
LOAD = 0.7
CAPACITY_REQUESTS = 40
CALIBRATION_SECONDS = 30.0


@dataclass(frozen=True)
class SoakPath:
    """One endpoint of the soak: where it is and how to make a request body."""

    name: str
    route: str
    make_body: Callable[[np.random.Generator], dict[str, Any]]
    images: bool = False  # bodies of varied images: keep making new ones during the run


def _flowers(rng: np.random.Generator) -> dict[str, Any]:
    return {"images": [varied_b64(rng, 64, 1024) for _ in range(int(rng.integers(1, 4)))]}


def _faces(rng: np.random.Generator) -> dict[str, Any]:
    return {"input_data": [varied_b64(rng, 64, 2048)]}


PATHS = (
    SoakPath("heatflow", "/heatflow", heatflow_body),
    SoakPath("falsetrue", "/falsetrue", falsetrue_body),
    SoakPath("antibiotics", "/antibiotics", antibiotics_body),
    SoakPath("flowers", "/flowers", _flowers, images=True),
    SoakPath("face", "/face", _faces, images=True),
    SoakPath("super", "/super", _faces, images=True),
)


class BodySource:
    """Request bodies of one path: a pool made in advance, refreshed in the background."""

    def __init__(self, path: SoakPath, seed: int, size: int = 256) -> None:
        self.path = path
        self.rng = np.random.default_rng(seed)
        self.pool = [path.make_body(self.rng) for _ in range(size)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True)

    def next(self) -> dict[str, Any]:
        return random.choice(self.pool)

    def start(self) -> BodySource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _refresh(self) -> None:
        replace = np.random.default_rng(0)
        while not self._stop.wait(0.1):
            self.pool[int(replace.integers(len(self.pool)))] = self.path.make_body(self.rng)


def body_sources(paths: Sequence[SoakPath]) -> dict[str, BodySource]:
    """A source per path; the image paths' pools are refreshed, the others are fixed."""
    sources = {}
    for seed, path in enumerate(paths):
        source = BodySource(path, seed, size=256)
        sources[path.name] = source.start() if path.images else source
    return sources


@dataclass
class Record:
    path: str
    started: float  # seconds since the start of the run
    latency_s: float
    status: str  # HTTP status, or the exception's name


class Client:
    """Sends the soak's requests and records each outcome."""

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]):
        self.session = session
        self.url = url.rstrip("/")
        self.headers = headers
        self.records: list[Record] = []
        self.origin = time.monotonic()

    async def send(self, path: SoakPath, body: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            async with self.session.post(
                self.url + path.route, json=body, headers=self.headers
            ) as response:
                await response.read()
                status = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        self.records.append(
            Record(path.name, started - self.origin, time.monotonic() - started, status)
        )


async def measure_capacity(
    client: Client, path: SoakPath, bodies: BodySource, seconds: float, min_requests: int
) -> dict[str, float]:
    """Requests per second answered 200 to one closed-loop client: the path's rate when its
    requests come one at a time. (Many clients measure what batching buys, a rate the soak's
    sparse arrivals never reach: at 70% of that the first 30-minute soak was past capacity
    from its first minute, p99 growing to the client's 300 s timeout.)"""
    first = len(client.records)
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline or len(client.records) - first < min_requests:
        await client.send(path, bodies.next())
    elapsed = time.monotonic() - started
    measured = client.records[first:]
    del client.records[first:]  # the probe is not part of the soak
    ok = sum(record.status == "200" for record in measured)
    return {"rps": ok / elapsed, "requests": len(measured), "errors": len(measured) - ok}


async def open_loop(
    client: Client, path: SoakPath, bodies: BodySource, rate: float, seconds: float, seed: int
) -> None:
    """Poisson arrivals at `rate` per second for `seconds`; each arrival is its own task, so a
    slow answer never holds back the next arrival (as real clients behave)."""
    rng = np.random.default_rng(seed)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    due = start
    while True:
        due += rng.exponential(1.0 / rate)
        if due - start >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        task = asyncio.create_task(client.send(path, bodies.next()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def calibrate(
    client: Client,
    paths: Sequence[SoakPath],
    sources: dict[str, BodySource],
    rates: dict[str, float],
    load: float,
    seconds: float,
    arbiter_pid: int,
    server_cpus: Sequence[int],
) -> dict[str, float]:
    """Every path at once at `rates` for `seconds`: the share of the server's cores the service
    used, and the factor (at most 1) that brings the mix to `load` of them."""
    first = len(client.records)
    before, started = core_counters(arbiter_pid, server_cpus), time.monotonic()
    await asyncio.gather(
        *(
            open_loop(client, path, sources[path.name], rates[path.name], seconds, 1000 + seed)
            for seed, path in enumerate(paths)
            if rates[path.name] > 0
        )
    )
    after, elapsed = core_counters(arbiter_pid, server_cpus), time.monotonic() - started
    del client.records[first:]  # the calibration is not part of the soak
    share = (after["served_cpu_s"] - before["served_cpu_s"]) / (elapsed * len(server_cpus))
    factor = min(1.0, load / share) if share > 0 else 1.0
    return {"seconds": seconds, "served_share": round(share, 3), "factor": round(factor, 3)}


def per_minute(
    records: Sequence[Record],
    minutes: int,
    samples: Sequence[dict[str, Any]] = (),
    cores: int = 1,
) -> list[dict[str, Any]]:
    """Requests, errors and p99 per minute of the run (by the minute a request started),
    overall and per path; with the sampler's core counters, how the server's cores were used."""
    rows = []
    for minute in range(minutes):
        inside = [r for r in records if minute * 60 <= r.started < (minute + 1) * 60]
        row: dict[str, Any] = {
            "minute": minute + 1,
            "requests": len(inside),
            "errors": sum(r.status != "200" for r in inside),
            "p99_ms": _p99(inside),
            "server_cores": core_use(samples, minute * 60, (minute + 1) * 60, cores),
            "paths": {},
        }
        for name in sorted({r.path for r in inside}):
            own = [r for r in inside if r.path == name]
            row["paths"][name] = {
                "requests": len(own),
                "errors": sum(r.status != "200" for r in own),
                "p99_ms": _p99(own),
            }
        rows.append(row)
    return rows


def _p99(records: Sequence[Record]) -> float | None:
    if not records:
        return None
    return round(latency_summary([r.latency_s for r in records])["p99_ms"], 1)


async def soak(
    url: str,
    arbiter_pid: int,
    minutes: float,
    load: float = LOAD,
    capacity_seconds: float = 10.0,
    capacity_requests: int = CAPACITY_REQUESTS,
    calibration_seconds: float = CALIBRATION_SECONDS,
    headers: dict[str, str] | None = None,
    paths: Sequence[SoakPath] = PATHS,
) -> dict[str, Any]:
    """Measure each path's capacity, calibrate the mix to `load` of the server's cores, then
    run every path at once for `minutes`."""
    # Idle connections are dropped by the client before the server's keep-alive timeout (5 s,
    # uvicorn's default) can close them under a request being sent: that race is the
    # client's to avoid, as every well-configured client does.
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=2.0)
    timeout = aiohttp.ClientTimeout(total=300)
    sources = body_sources(paths)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, url, headers or {})
        capacity = {}
        for path in paths:
            capacity[path.name] = await measure_capacity(
                client, path, sources[path.name], capacity_seconds, capacity_requests
            )
            print(f"  capacity {path.name:<12} {capacity[path.name]['rps']:8.1f} req/s", flush=True)
        nominal = {p.name: load * capacity[p.name]["rps"] / len(paths) for p in paths}
        server_cpus = sorted(psutil.Process(arbiter_pid).cpu_affinity())
        calibration = await calibrate(
            client, paths, sources, nominal, load, calibration_seconds, arbiter_pid, server_cpus
        )
        print(
            f"  calibration: the nominal rates used {calibration['served_share']:.0%} of the "
            f"server's cores; rates x {calibration['factor']:.2f}",
            flush=True,
        )
        rates = {name: rate * calibration["factor"] for name, rate in nominal.items()}
        seconds = minutes * 60
        cpu_before = _cpu_seconds()
        client.origin = time.monotonic()

        def progress() -> dict[str, float]:  # read by the sampler thread
            return {"requests": len(client.records), **core_counters(arbiter_pid, server_cpus)}

        with RssSampler(arbiter_pid, interval_s=5.0, progress=progress) as rss:
            await asyncio.gather(
                *(
                    open_loop(client, path, sources[path.name], rates[path.name], seconds, seed)
                    for seed, path in enumerate(paths)
                    if rates[path.name] > 0
                )
            )
        client_cpu = (_cpu_seconds() - cpu_before) / seconds
    for source in sources.values():
        source.stop()
    records = client.records
    warmup_s = max(60.0, seconds / 10)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {
        "minutes": minutes,
        "load": load,
        "capacity": capacity,
        "calibration": calibration,
        "rates_rps": {name: round(rate, 2) for name, rate in rates.items()},
        "requests": len(records),
        "errors": sum(r.status != "200" for r in records),
        "statuses": statuses,
        "latency": latency_summary([r.latency_s for r in records]),
        "per_minute": per_minute(records, int(np.ceil(minutes)), rss.samples, len(server_cpus)),
        "warmup_s": warmup_s,
        "rss_growth_after_warmup": growth_after_warmup(
            rss.samples, lambda sample: sample["t"] >= warmup_s
        ),
        "rss_samples": rss.samples,
        "client_cpu_util": round(client_cpu, 3),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def render_markdown(result: dict[str, Any]) -> str:
    """The README/docs table: per minute, and the RSS of each process after the warm-up."""
    paths = sorted(result["rates_rps"])
    lines = [
        f"Soak: {result['minutes']:g} min at {result['load']:.0%} of the measured capacity, "
        f"{result['requests']:,} requests, {result['errors']} errors "
        f"(statuses: {', '.join(f'{k}: {v:,}' for k, v in sorted(result['statuses'].items()))}).",
        "",
        "Capacity (req/s, each path alone) and soak rate: "
        + ", ".join(
            f"{p} {result['capacity'][p]['rps']:.1f} -> {result['rates_rps'][p]:.2f}" for p in paths
        )
        + ".",
        *_calibration_line(result.get("calibration")),
        "",
        "Server cores per minute: the service's own work, anything else on them, and time "
        "stolen by the hypervisor (% of the cores).",
        "",
        "| minute | requests | errors | p99 ms | "
        + " | ".join(f"{p} p99" for p in paths)
        + " | service % | other % | stolen % |",
        "|---" * (7 + len(paths)) + "|",
    ]
    for row in result["per_minute"]:
        cells = [_fmt(row["paths"].get(p, {}).get("p99_ms")) for p in paths]
        cores = row.get("server_cores") or {}
        cells += [_fmt(cores.get(key)) for key in ("served_pct", "other_pct", "steal_pct")]
        lines.append(
            f"| {row['minute']} | {row['requests']:,} | {row['errors']} | {_fmt(row['p99_ms'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"RSS per process (MiB): highest in the warm-up (the first {result['warmup_s']:.0f} s), "
        "highest afterwards, and once every request was answered; growth = that last over the "
        "warm-up's highest (memory still held), peak growth = the highest after over it:",
        "",
        "| process | warm-up peak | peak after | at the end | growth | peak growth |",
        "|---|---|---|---|---|---|",
    ]
    for name, growth in sorted(result["rss_growth_after_warmup"].items()):
        lines.append(
            f"| {name} | {growth['warmup_peak_mib']:.0f} | {growth['peak_after_warmup_mib']:.0f}"
            f" | {growth['final_mib']:.0f} | {growth['growth_pct']:.1f}% |"
            f" {growth['peak_growth_pct']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def _calibration_line(calibration: dict[str, float] | None) -> list[str]:
    if not calibration:
        return []
    return [
        "",
        f"Calibration ({calibration['seconds']:g} s, every path at once): the rates from the "
        f"capacities used {calibration['served_share']:.0%} of the server's cores; every rate "
        f"was multiplied by {calibration['factor']:.2f}.",
    ]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=FULL_MINUTES)
    parser.add_argument("--load", type=float, default=LOAD, help="share of capacity (0.7)")
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument(
        "--capacity-requests",
        type=int,
        default=CAPACITY_REQUESTS,
        help="at least this many requests per path in the capacity probe",
    )
    parser.add_argument(
        "--calibration-seconds",
        type=float,
        default=CALIBRATION_SECONDS,
        help="every path at once for this long, to bring the mix to --load of the cores",
    )
    parser.add_argument("--home", help="BENTOML_HOME holding the models (default: built fresh)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    server_cpus, client_cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    workdir = servers.scratch_folder("soak")
    env = servers.server_env(args.home or str(workdir / "bentoml"), PYTHONPATH=str(servers.ROOT))
    prepare_store(env["BENTOML_HOME"], env)
    server = servers.start_bentoml(env, server_cpus, workdir / "serve.log")
    os.sched_setaffinity(0, set(client_cpus))  # this process is the load generator
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        print(f"soak: {args.minutes:g} min at {args.load:.0%} of capacity, {server.url}")
        result = asyncio.run(
            soak(
                server.url,
                server.process.pid,
                args.minutes,
                args.load,
                args.capacity_seconds,
                args.capacity_requests,
                args.calibration_seconds,
            )
        )
    finally:
        servers.stop(server)
    result["machine"] = servers.machine(server_cpus, client_cpus)
    result["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # A short run never overwrites the full run's files.
    prefix = "soak-" if args.minutes >= FULL_MINUTES else "soak-short-"
    json_path, md_path = write_results(args.out_dir, prefix, False, result, render_markdown(result))
    print(render_markdown(result))
    print(f"{json_path}\n{md_path}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
