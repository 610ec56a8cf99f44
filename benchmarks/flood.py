"""`make bench-flood`: how long /heatflow waits while a flood of large photos fills /face.

The admission rule (docs/security.md, "Floods") keeps places for the small paths when image
requests fill their share of an API worker's places. The test suite checks the behaviour
(the flood is shed with 503s, /heatflow answers 200 every time:
tests/integration/test_edge_outcomes.py); this measures the latency, which depends on the
machine and on whatever else runs on it, so it is a benchmark rather than an assertion.

One `bentoml serve` with few places per API worker (`limits.max_requests_in_flight`, 8 by
default here), pinned to the server CPUs. One /heatflow client sends a request every 0.1 s,
first alone ("quiet"), then while 16 clients send /face requests of two large photos each
("flood"). The result holds p50/p99/max per phase, the statuses, and whether the flood's p99
is within the configured SLO (`slo.p99_ms`).

    python -m benchmarks.flood                 # 20 s per phase
    python -m benchmarks.flood --seconds 8     # a quick look

Writes benchmarks/results/flood-<date>.json and benchmarks/results/flood-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks import servers
from benchmarks.run import RESULTS, prepare_store, write_results
from benchmarks.stats import latency_summary
from despliegue.config import config_path, load_settings

HEAT_BODY = json.dumps({"sediment_thickness_m": [1500.0]}).encode()
JSON = {"content-type": "application/json"}


def large_photo_body(side: int, photos: int = 2) -> bytes:
    """A /face request of `photos` copies of the astronaut at `side` px, as JPEG."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side)).save(buffer, "JPEG", quality=85)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return json.dumps({"input_data": [encoded] * photos}).encode()


async def phase(
    url: str,
    seconds: float,
    flooders: int,
    face_body: bytes,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """/heatflow every 0.1 s for `seconds` while `flooders` clients send `face_body` (the
    flood starts 3 s before the /heatflow client). `headers` go with every request (a token)."""
    sent = {**(headers or {}), **JSON}
    heat: list[float] = []
    heat_statuses: dict[str, int] = {}
    face_statuses: dict[str, int] = {}

    def count(table: dict[str, int], status: int) -> None:
        table[str(status)] = table.get(str(status), 0) + 1

    async def flood(client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            answer = await client.post("/face", content=face_body, headers=sent)
            count(face_statuses, answer.status_code)
            if answer.status_code == 503:
                await asyncio.sleep(0.05)

    async def light(client: httpx.AsyncClient, until: float) -> None:
        if flooders:
            await asyncio.sleep(3)  # the flood holds the image places by then
        while time.monotonic() < until:
            started = time.perf_counter()
            answer = await client.post("/heatflow", content=HEAT_BODY, headers=sent)
            if answer.status_code == 200:
                heat.append(time.perf_counter() - started)
            count(heat_statuses, answer.status_code)
            await asyncio.sleep(0.1)

    until = time.monotonic() + seconds + (3 if flooders else 0)
    limits = httpx.Limits(max_connections=flooders + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(flood(client, until) for _ in range(flooders)), light(client, until))
    return {
        "heatflow": {**latency_summary(heat), "statuses": heat_statuses},
        "face_statuses": face_statuses,
    }


def statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} × {status}" for status, count in sorted(counts.items())) or "-"


def render(result: dict[str, Any]) -> str:
    slo = result["slo_p99_ms"]
    lines = [
        f"# /heatflow under a /face flood, {result['date']}",
        "",
        f"{result['flooders']} clients send /face requests of two {result['side']} px photos to "
        f"an API worker with {result['in_flight']} places; one /heatflow client sends a request "
        f"every 0.1 s. SLO p99: {slo:.0f} ms.",
        "",
        "| phase | /heatflow answers | p50 ms | p99 ms | max ms | /face statuses |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("quiet", "flood"):
        row = result[name]
        heat = row["heatflow"]
        lines.append(
            f"| {name} | {statuses(heat['statuses'])} | {heat['p50_ms']:.1f} | "
            f"{heat['p99_ms']:.1f} | {heat['max_ms']:.1f} | {statuses(row['face_statuses'])} |"
        )
    verdict = "within" if result["flood"]["heatflow"]["p99_ms"] <= slo else "OVER"
    lines += ["", f"Flood p99 is {verdict} the SLO.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--side", type=int, default=2500, help="the photos' side, px")
    parser.add_argument("--home", help="BENTOML_HOME holding the models (default: built fresh)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    workdir = servers.scratch_folder("flood")
    config = servers.few_places_config(
        config_path(), workdir / "configuration.yaml", args.in_flight
    )
    env = servers.server_env(
        args.home or str(workdir / "bentoml"),
        PYTHONPATH=str(servers.ROOT),
        DESPLIEGUE_CONFIG=str(config),
    )
    prepare_store(env["BENTOML_HOME"], env)
    server_cpus, client_cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    os.sched_setaffinity(0, set(client_cpus))
    face_body = large_photo_body(args.side)
    server = servers.start_bentoml(env, server_cpus, workdir / "serve.log")
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        quiet = asyncio.run(phase(server.url, args.seconds, 0, face_body))
        flood = asyncio.run(phase(server.url, args.seconds, args.flooders, face_body))
    finally:
        servers.stop(server)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": servers.machine(server_cpus, client_cpus),
        "seconds": args.seconds,
        "flooders": args.flooders,
        "in_flight": args.in_flight,
        "side": args.side,
        "slo_p99_ms": load_settings(config).slo.p99_ms,
        "quiet": quiet,
        "flood": flood,
    }
    markdown = render(result)
    json_path, md_path = write_results(args.out_dir, "flood-", False, result, markdown)
    print(markdown)
    print(f"{json_path}\n{md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
