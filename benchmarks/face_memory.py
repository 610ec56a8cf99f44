"""Does the face runner give memory back? /face requests of ever-changing image sizes against
the real `bentoml serve`, with the resident memory of every worker process sampled throughout.

Each request carries 1-3 photos of a new random size (64-2048 px a side, JPEG or PNG), so
every input shape the detector sees is new, as with real clients. The result is, per process,
the highest RSS during the warm-up and the highest afterwards; "flat" means < 10% growth.

    python -m benchmarks.face_memory                    # 2,000 requests (~20 min on 2 cores)
    python -m benchmarks.face_memory --requests 200     # a quick look

Writes benchmarks/results/face-memory-<date>.json (and prints a summary line).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import servers
from benchmarks.processes import RssSampler, growth_after_warmup
from benchmarks.run import RESULTS, prepare_store
from benchmarks.varied_images import varied_b64

FACE_SERVICE = "FaceAnalyzer"


async def send_varied_faces(
    url: str,
    requests: int,
    clients: int,
    counts: dict[str, Any],
    seed: int = 14,
    headers: dict[str, str] | None = None,
) -> None:
    """`requests` /face calls from `clients` concurrent clients; statuses go into `counts`."""
    rng = np.random.default_rng(seed)
    next_request = iter(range(requests))

    async def client(session: httpx.AsyncClient) -> None:
        for _ in next_request:
            images = [varied_b64(rng) for _ in range(int(rng.integers(1, 4)))]
            try:
                answer = await session.post("/face", json={"input_data": images})
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            counts["sent"] += 1
            counts["statuses"][status] = counts["statuses"].get(status, 0) + 1
            if counts["sent"] % 100 == 0:
                print(f"{counts['sent']} requests answered", file=sys.stderr, flush=True)

    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))


def run(url: str, arbiter_pid: int, requests: int, clients: int, warmup: int) -> dict[str, Any]:
    counts: dict[str, Any] = {"sent": 0, "statuses": {}}
    started = time.monotonic()
    interrupted = False
    with RssSampler(arbiter_pid, interval_s=2.0, progress=lambda: {"sent": counts["sent"]}) as rss:
        try:
            asyncio.run(send_varied_faces(url, requests, clients, counts))
        except KeyboardInterrupt:  # Ctrl-C: report the requests answered so far
            interrupted = True
    errors = counts["sent"] - counts["statuses"].get("200", 0)
    return {
        "requests": counts["sent"],
        "interrupted": interrupted,
        "clients": clients,
        "warmup_requests": warmup,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": counts["statuses"],
        "errors": errors,
        "growth": growth_after_warmup(rss.samples, lambda sample: sample["sent"] >= warmup),
        "samples": rss.samples,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--warmup", type=int, help="requests before the baseline (default 10%%)")
    parser.add_argument("--home", help="BENTOML_HOME holding the models (default: built fresh)")
    parser.add_argument(
        "--server",
        nargs=2,
        metavar=("URL", "PID"),
        help="measure a server already running (auth off) at URL whose arbiter is PID",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(20, args.requests // 10)
    if args.server:
        url, pid = args.server[0], int(args.server[1])
        result = run(url, pid, args.requests, args.clients, warmup)
        return report(result, args, warmup)

    workdir = servers.scratch_folder("face-memory")
    env = servers.server_env(args.home or str(workdir / "bentoml"), PYTHONPATH=str(servers.ROOT))
    prepare_store(env["BENTOML_HOME"], env)
    server_cpus, _ = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    server = servers.start_bentoml(env, server_cpus, workdir / "serve.log")
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        result = run(server.url, server.process.pid, args.requests, args.clients, warmup)
    finally:
        servers.stop(server)
    return report(result, args, warmup)


def report(result: dict[str, Any], args: argparse.Namespace, warmup: int) -> int:
    result["machine"] = servers.machine(sorted(os.sched_getaffinity(0)), [])
    result["date"] = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"face-memory-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    face = result["growth"].get(FACE_SERVICE, {})
    print(
        f"{result['requests']} /face requests ({result['seconds']:.0f} s"
        f"{', interrupted' if result['interrupted'] else ''}), {result['errors']} errors; "
        f"{FACE_SERVICE} RSS at most {face.get('warmup_peak_mib')} MiB in the first {warmup} "
        f"requests, at most {face.get('peak_after_warmup_mib')} MiB afterwards "
        f"({face.get('growth_pct')}% growth), {face.get('final_mib')} MiB at the end. {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
