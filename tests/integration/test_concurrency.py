"""Concurrent load on the live server: no 5xx, and concurrent requests really share runner
calls (the API's coalescing: despliegue/coalescing.py)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

REQUESTS = 400
CONCURRENCY = 48


async def fire(server: LiveServer, path: str, body: dict) -> list[int]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with server.async_client(limits=limits) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> int:
            async with gate:
                return (await client.post(path, json=body)).status_code

        return await asyncio.gather(*(one() for _ in range(REQUESTS)))


def batch_histogram(server: LiveServer, method: str) -> tuple[float, float]:
    """(items, calls) the API sent to one runner method, from /metrics."""
    text = server.get("/metrics").text
    values = {}
    for kind in ("sum", "count"):
        labels = rf'\{{[^}}]*method_name="{method}"[^}}]*\}}'
        pattern = rf"despliegue_runner_call_items_{kind}{labels} ([0-9.e+]+)"
        values[kind] = sum(float(v) for v in re.findall(pattern, text))
    return values["sum"], values["count"]


@pytest.mark.parametrize(
    ("path", "body", "method"),
    [
        ("/heatflow", {"sediment_thickness_m": [1200.0]}, "predict"),
        ("/falsetrue", {"texts": ["El informe trimestral del banco central."]}, "classify"),
    ],
)
def test_concurrent_requests_all_succeed_and_are_batched(
    live_server: LiveServer, path: str, body: dict, method: str
) -> None:
    before_sum, before_count = batch_histogram(live_server, method)
    statuses = asyncio.run(fire(live_server, path, body))
    failures = [s for s in statuses if s != 200]
    assert failures == [], f"{len(failures)} of {REQUESTS} failed: {sorted(set(failures))}"
    after_sum, after_count = batch_histogram(live_server, method)
    batches = after_count - before_count
    assert after_sum - before_sum == REQUESTS  # every request's item went through, once
    assert batches < REQUESTS, "no two requests ever shared a runner call"
