"""Request coalescing in the API: concurrent requests for one runner method share one call.

Why: a call from the API to a runner is an HTTP round trip through two BentoML servers,
about 2 ms of CPU on this kind of machine, while a scikit-learn model or a small CNN needs
well under a millisecond per item. Adaptive batching in the runner merges the calls that
reach it, but every request still pays its own round trip. Coalescing merges requests
before the round trip, so a busy path pays it once per batch.

How: a call goes out at once while fewer than `calls_in_flight` calls of that method are
pending, so a lone client never waits. Otherwise requests queue, and when a call returns the
queue leaves together in one call, up to `max_batch_size` items (a request larger than that
goes alone; the runner's own batching splits it). If a merged call fails, each of its
requests is retried alone, so one request's failure is never another request's answer.

The items of each call are counted in the Prometheus histogram
`despliegue_runner_call_items{runner_name, method_name}` on the API's /metrics.

A runner worker that dies (killed, out of memory) is replaced by BentoML's supervisor; the
calls it had in flight lose their connection, some halfway through their answer (so does a
call sent on a keep-alive connection the runner is closing for idleness). Model calls are pure,
so such a call is sent once more: it waits in the runner's socket until the replacement is up.
If that fails too, or the runner sheds load (its own 503), the request is answered 503 with
Retry-After (`TryLater`), never 500.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from despliegue.config import Batching
from despliegue.errors import TryLater

if TYPE_CHECKING:
    from prometheus_client import Histogram

Item = TypeVar("Item")
Result = TypeVar("Result")

# A runner method as the API calls it: a list of items in, one result per item out.
RunnerMethod = Callable[[list[Item]], Awaitable[Sequence[Result]]]

# Seconds a client is told to wait when a runner is being replaced (a TensorFlow runner loads
# in ~5-10 s on 2 cores) or sheds load.
RUNNER_RETRY_AFTER_S = 5
logger = logging.getLogger("despliegue.runners")


@dataclass
class _Waiting(Generic[Item, Result]):
    """One request's items and the future its handler awaits."""

    items: list[Item]
    answer: asyncio.Future[list[Result]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Coalescer(Generic[Item, Result]):
    """Merges concurrent calls of one runner method (see the module docstring)."""

    def __init__(
        self,
        name: str,
        method: RunnerMethod[Item, Result],
        max_batch_size: int,
        calls_in_flight: int,
    ) -> None:
        """`name` is "RunnerClass.method", the labels of the items histogram."""
        runner_name, _, method_name = name.partition(".")
        self._items_per_call = call_items_histogram().labels(
            runner_name=runner_name, method_name=method_name
        )
        self._method = method
        self._max_batch_size = max_batch_size
        self._calls_in_flight = calls_in_flight
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until each call ends

    async def __call__(self, items: Sequence[Item]) -> list[Result]:
        """One result per item, in order, as if the method had been called on `items` alone."""
        if len(items) == 0:  # a numpy array has no truth value
            return []
        waiting: _Waiting[Item, Result] = _Waiting(list(items))
        self._queue.append(waiting)
        self._dispatch()
        return await waiting.answer

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._calls_in_flight:
            group = [self._queue.popleft()]
            size = len(group[0].items)
            while self._queue and size + len(self._queue[0].items) <= self._max_batch_size:
                size += len(self._queue[0].items)
                group.append(self._queue.popleft())
            group = [waiting for waiting in group if not waiting.answer.done()]  # cancelled
            if not group:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, group: list[_Waiting[Item, Result]]) -> None:
        try:
            items = [item for waiting in group for item in waiting.items]
            self._items_per_call.observe(len(items))
            try:
                results = await self._method(items)
                self._answer(group, results)
            except Exception as error:  # handed to the requests, not swallowed
                if len(group) == 1 or isinstance(error, TryLater):  # not this request's fault
                    for waiting in group:
                        _settle(waiting.answer, error=error)
                    return
                for waiting in group:  # isolate the failure: each request alone
                    try:
                        self._answer([waiting], await self._method(waiting.items))
                    except Exception as own_error:
                        _settle(waiting.answer, error=own_error)
        finally:
            self._in_flight -= 1
            self._dispatch()

    @staticmethod
    def _answer(group: list[_Waiting[Item, Result]], results: Sequence[Result]) -> None:
        expected = sum(len(waiting.items) for waiting in group)
        if len(results) != expected:
            raise RuntimeError(f"runner answered {len(results)} results for {expected} items")
        start = 0
        for waiting in group:
            end = start + len(waiting.items)
            _settle(waiting.answer, result=list(results[start:end]))
            start = end


def _settle(
    answer: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    """Resolve a request's future unless its handler is gone (client disconnected)."""
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)


@functools.cache
def call_items_histogram() -> Histogram:
    """Created on first use, in the worker: BentoML points prometheus_client at its
    multiprocess directory only after importing the service module."""
    from prometheus_client import Histogram

    return Histogram(
        "despliegue_runner_call_items",
        "Items per call from the API to a runner method (requests merged by coalescing)",
        labelnames=["runner_name", "method_name"],
        buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    )


def _runner_gone(error: BaseException) -> bool:
    """The connection to the runner broke, as opposed to a slow answer: its process died
    (before its answer, or halfway through writing it: aiohttp's ClientPayloadError), or it
    closed an idle keep-alive connection just as the API reused it (BentoML's client to a
    dependency is aiohttp)."""
    import aiohttp

    broken = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    return isinstance(error, broken) and not isinstance(error, TimeoutError)


def _runner_overloaded(error: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException

    return isinstance(error, BentoMLException) and error.error_code == 503


def surviving_restarts(
    name: str, method: RunnerMethod[Item, Result], retries: int = 1
) -> RunnerMethod[Item, Result]:
    """`method`, called once more when its runner's process died under the call; TryLater
    (503, Retry-After) when it died again or the runner sheds load."""

    async def call(items: list[Item]) -> Sequence[Result]:
        for attempt in range(retries + 1):
            try:
                return await method(items)
            except Exception as error:
                if _runner_overloaded(error):
                    raise TryLater(
                        f"{name}: the model is overloaded; retry after {RUNNER_RETRY_AFTER_S} s",
                        retry_after_s=RUNNER_RETRY_AFTER_S,
                    ) from None
                if not _runner_gone(error):
                    raise
                logger.warning(
                    "%s: connection to the runner lost (%s: %s); %s",
                    name,
                    type(error).__name__,
                    error,
                    "calling again" if attempt < retries else "answering 503",
                )
        raise TryLater(
            f"{name}: the model's worker is being restarted; retry after {RUNNER_RETRY_AFTER_S} s",
            retry_after_s=RUNNER_RETRY_AFTER_S,
        )

    return call


def coalesce(
    name: str, method: RunnerMethod[Item, Result], batching: Batching
) -> RunnerMethod[Item, Result]:
    """The way the API calls the batchable runner method `name` ("RunnerClass.method"):
    coalesced when batching is on, else one call per request (the benchmark's "batching off");
    either way surviving a runner restart."""
    method = surviving_restarts(name, method)
    if not batching.enabled:
        return method
    return Coalescer(name, method, batching.max_batch_size, batching.calls_in_flight)
