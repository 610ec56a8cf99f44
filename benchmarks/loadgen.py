"""Closed-loop HTTP load generator: N clients, each sending its next request as soon as the
last one answered, for a fixed time; prints one JSON result.

It runs as its own process, pinned by the caller (benchmarks/run.py) to the client CPUs with
os.sched_setaffinity, so it cannot take the server's cores. One asyncio loop on aiohttp
(cheaper per request than httpx) keeps a single core able to drive the sklearn paths; the
result reports the client's CPU use so a client-bound point is visible, not hidden.

    python -m benchmarks.loadgen --url http://127.0.0.1:3000 --path heatflow --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from benchmarks.paths import BenchPath, by_name, encode
from benchmarks.stats import latency_summary

BODY_POOL = 256


async def _scrape(session: aiohttp.ClientSession, url: str | None) -> str:
    if not url:
        return ""
    async with session.get(url) as response:
        return await response.text()


async def run_load(
    url: str,
    path: BenchPath,
    concurrency: int,
    seconds: float,
    warmup: float,
    scrape_metrics: bool = True,
    design: str = "service",
) -> dict[str, Any]:
    rng = np.random.default_rng(8)
    route, make_body = path.request(design)
    bodies = [encode(path, make_body(rng)) for _ in range(BODY_POOL)]
    headers = {"content-type": path.content_type}
    target = url.rstrip("/") + route
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    recording = False
    stop = False

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        sent = index
        while not stop:
            body = bodies[sent % BODY_POOL]
            sent += concurrency
            started = time.perf_counter()
            try:
                async with session.post(target, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            if recording and not stop:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency + 1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        metrics_url = url.rstrip("/") + "/metrics" if scrape_metrics else None
        tasks = [asyncio.create_task(client(i, session)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        before = await _scrape(session, metrics_url)
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        recording = True
        await asyncio.sleep(seconds)
        stop = True
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
        after = await _scrape(session, metrics_url)
        await asyncio.gather(*tasks)

    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "throughput_rps": ok / elapsed,
        **latency_summary(latencies),
        "client_cpu_util": cpu / elapsed,
        "metrics_before": before,
        "metrics_after": after,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True, help="a name from benchmarks/paths.py")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--no-metrics", action="store_true", help="server has no /metrics")
    parser.add_argument(
        "--design",
        choices=("service", "mlflow", "mlserver", "v2"),
        default="service",
        help="mlflow: the path's MLflow body to /invocations (`mlflow models serve`); "
        "mlserver: its V2 inference body to /v2/models/<path>/infer; v2: the same tensors to "
        "the service's own V2 route, /v2/models/<store name>/infer",
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_load(
            args.url,
            by_name(args.path),
            args.concurrency,
            args.seconds,
            args.warmup,
            not args.no_metrics,
            args.design,
        )
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
