"""Request coalescing (despliegue/coalescing.py) with a plain async function as the runner
method: which requests share a call, in which order answers come back, and how failures
stay with the request that caused them. The live server tests check it end to end."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable

from despliegue.coalescing import Coalescer, call_items_histogram, coalesce, surviving_restarts
from despliegue.config import Batching
from despliegue.errors import TryLater


class RecordingMethod:
    """A runner method that doubles numbers, records each call, and can be held open."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [2 * item for item in items]


def coalescer(method: RecordingMethod, max_batch_size: int = 8, in_flight: int = 1) -> Coalescer:
    return Coalescer("TestRunner.double", method, max_batch_size, in_flight)


async def settle() -> None:
    """Let every ready task run (a request task, then the call task it starts)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def hold_first_call(method: RecordingMethod, batcher: Coalescer, first: list[int]):
    """Start a call and keep it pending, so later requests have to wait and merge."""
    method.release.clear()
    task = asyncio.create_task(batcher(first))
    await settle()
    assert method.calls == [first]
    return task


def test_a_lone_request_is_sent_at_once() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        assert await coalescer(method)([1, 2, 3]) == [2, 4, 6]
        assert method.calls == [[1, 2, 3]]

    asyncio.run(scenario())


def test_numpy_arrays_are_requests_too() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        assert await coalescer(method)(np.array([1, 2])) == [2, 4]
        assert await coalescer(method)(np.array([])) == []
        assert method.calls == [[1, 2]]

    asyncio.run(scenario())


def test_requests_waiting_for_a_pending_call_share_the_next_one_in_order() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        batcher = coalescer(method)
        first = await hold_first_call(method, batcher, [1])
        waiting = [asyncio.create_task(batcher(items)) for items in ([2], [3, 4], [5])]
        await settle()
        assert len(method.calls) == 1  # nothing else leaves while one call is pending
        method.release.set()
        assert await first == [2]
        assert [await task for task in waiting] == [[4], [6, 8], [10]]
        assert method.calls == [[1], [2, 3, 4, 5]]

    asyncio.run(scenario())


def test_a_merged_call_stops_at_max_batch_size_and_a_large_request_goes_alone() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        batcher = coalescer(method, max_batch_size=3)
        first = await hold_first_call(method, batcher, [0])
        requests = ([1, 2], [3], [4, 5, 6, 7], [8])
        waiting = [asyncio.create_task(batcher(items)) for items in requests]
        await settle()
        method.release.set()
        await first
        answers = [await task for task in waiting]
        assert answers == [[2 * i for i in items] for items in requests]
        assert method.calls == [[0], [1, 2, 3], [4, 5, 6, 7], [8]]

    asyncio.run(scenario())


def test_calls_in_flight_bounds_the_pending_calls() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        method.release.clear()
        batcher = coalescer(method, in_flight=2)
        tasks = [asyncio.create_task(batcher([i])) for i in range(4)]
        await settle()
        assert method.calls == [[0], [1]]
        method.release.set()
        assert [await task for task in tasks] == [[0], [2], [4], [6]]
        assert method.calls == [[0], [1], [2, 3]]

    asyncio.run(scenario())


def test_a_failure_in_a_merged_call_stays_with_the_request_that_caused_it() -> None:
    async def scenario() -> None:
        method = RecordingMethod(fail_on=13)
        batcher = coalescer(method)
        first = await hold_first_call(method, batcher, [1])
        good, bad, other = (asyncio.create_task(batcher(x)) for x in ([2], [13], [3]))
        await settle()
        method.release.set()
        await first
        assert await good == [4]
        assert await other == [6]
        with pytest.raises(ValueError, match="cannot take 13"):
            await bad
        # the merged call failed, then each of its requests was retried alone
        assert method.calls == [[1], [2, 13, 3], [2], [13], [3]]

    asyncio.run(scenario())


def test_a_request_whose_client_left_is_not_sent_and_does_not_block_others() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        batcher = coalescer(method)
        first = await hold_first_call(method, batcher, [1])
        gone = asyncio.create_task(batcher([7]))
        stays = asyncio.create_task(batcher([8]))
        await settle()
        gone.cancel()
        method.release.set()
        await first
        assert await stays == [16]
        assert gone.cancelled()
        assert method.calls == [[1], [8]]

    asyncio.run(scenario())


def test_a_runner_answering_the_wrong_number_of_results_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await Coalescer("TestRunner.short", short, 8, 1)([1, 2])

    asyncio.run(scenario())


def test_items_per_call_are_counted_for_metrics() -> None:
    def counted() -> float:
        histogram = call_items_histogram().labels(runner_name="TestRunner", method_name="count")
        return sum(
            sample.value
            for metric in histogram.collect()
            for sample in metric.samples
            if sample.name.endswith("_sum")
        )

    async def scenario() -> None:
        method = RecordingMethod()
        await Coalescer("TestRunner.count", method, 8, 1)([1, 2, 3])

    before = counted()
    asyncio.run(scenario())
    assert counted() - before == 3


def test_batching_off_calls_the_method_once_per_request() -> None:
    async def scenario() -> None:
        method = RecordingMethod()
        off = coalesce(
            "TestRunner.same", method, Batching(max_batch_size=8, max_latency_ms=100, enabled=False)
        )
        assert not isinstance(off, Coalescer)
        assert await asyncio.gather(off([1]), off([2, 3])) == [[2], [4, 6]]
        assert sorted(method.calls) == [[1], [2, 3]]

    on = Batching(max_batch_size=8, max_latency_ms=100)
    assert isinstance(coalesce("TestRunner.same", RecordingMethod(), on), Coalescer)


class DyingRunner:
    """A runner method whose worker process dies under the first `deaths` calls: the
    connection breaks as aiohttp (BentoML's client to a runner) reports it."""

    def __init__(self, deaths: int, error: Exception | None = None) -> None:
        self.deaths = deaths
        self.calls = 0
        self.error = error or aiohttp.ServerDisconnectedError()

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls += 1
        if self.calls <= self.deaths:
            raise self.error
        return [2 * item for item in items]


@pytest.mark.parametrize("enabled", [True, False], ids=["batching-on", "batching-off"])
def test_a_call_whose_runner_died_is_sent_again(enabled: bool) -> None:
    runner = DyingRunner(deaths=1)
    batching = Batching(max_batch_size=8, max_latency_ms=100, enabled=enabled)
    call = coalesce("TestRunner.dying", runner, batching)
    assert asyncio.run(call([1, 2])) == [2, 4]
    assert runner.calls == 2


@pytest.mark.parametrize(
    "error",
    [aiohttp.ServerDisconnectedError(), ServiceUnavailable("overloaded")],
    ids=["died-twice", "runner-sheds-load"],
)
def test_a_runner_that_cannot_answer_gives_503_with_retry_after(error: Exception) -> None:
    runner = DyingRunner(deaths=2, error=error)
    call = coalesce("TestRunner.dying", runner, Batching(max_batch_size=8, max_latency_ms=100))
    with pytest.raises(TryLater) as caught:
        asyncio.run(call([1]))
    response = caught.value.to_response()
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert runner.calls == (2 if isinstance(error, aiohttp.ServerDisconnectedError) else 1)


def test_a_failed_runner_fails_a_merged_call_once_not_request_by_request() -> None:
    async def scenario() -> None:
        runner = DyingRunner(deaths=10)
        batcher = Coalescer("TestRunner.dying", surviving_restarts("x", runner), 8, 1)
        results = await asyncio.gather(
            batcher([1]), batcher([2]), batcher([3]), return_exceptions=True
        )
        assert all(isinstance(result, TryLater) for result in results)
        # first call alone (2 tries), then the merged [2, 3] (2 tries): no retry per request
        assert runner.calls == 4

    asyncio.run(scenario())


def test_slow_answers_and_model_errors_are_not_retried() -> None:
    for error in (aiohttp.ServerTimeoutError("slow"), ValueError("model bug")):
        runner = DyingRunner(deaths=1, error=error)
        call = surviving_restarts("TestRunner.x", runner)
        with pytest.raises(type(error)):
            asyncio.run(call([1]))
        assert runner.calls == 1


def test_a_runner_killed_halfway_through_its_answer_is_called_again() -> None:
    """A real socket: the first answer stops after its headers and a few bytes, as when the
    runner's process is killed while writing it (aiohttp raises ClientPayloadError, not a
    connection error); the call is sent once more and the second answer is the result."""

    async def scenario() -> None:
        answers = 0

        async def runner_process(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            nonlocal answers
            await reader.readuntil(b"\r\n\r\n")
            answers += 1
            body = b"[2, 4, 6]"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body))
            writer.write(body if answers > 1 else body[:3])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(runner_process, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:

            async def method(items: list[int]) -> list[int]:
                async with session.post("/double", json=items) as response:
                    return json.loads(await response.read())

            with pytest.raises(aiohttp.ClientPayloadError):  # what a bare call meets
                await method([1, 2, 3])
            answers = 0
            assert await surviving_restarts("TestRunner.double", method)([1, 2, 3]) == [2, 4, 6]
            assert answers == 2

    asyncio.run(scenario())
