"""Answers from one loaded version that the caller names: the Open Inference Protocol's
`/v2/models/{name}/versions/{version}/infer` (despliegue/v2/routes.py).

A pinned call is answered by exactly that loaded model (the served one, the canary or the
shadow), with no canary share and no shadow copy. It cannot share a runner call with other
requests (a batch is answered by one model), so it skips the API's coalescer and BentoML's
adaptive batching: every batchable runner method has a twin, `<method>_pinned(items, tag)`,
that is not batched (`with_pinned_twins`). Everything else is the everyday path: the seed
endpoint's validation, image guards, answer function and drift capture (by the tag that
answered, as for a canary's answers).

Two context variables carry the pin, each set for one call only:
- in the API, `pinned_to(key, tag)` around the seed endpoint's call (`pinned_tag(key)` is read
  where the endpoint calls its runner: only that model key is pinned, so /super pinned to a
  validator version still detects faces with the served detector);
- in the runner, the twin sets the tag its `ServedModels.answer` call answers with.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import bentoml

Item = TypeVar("Item")
Result = TypeVar("Result")

PINNED_SUFFIX = "_pinned"

_API_PINS: ContextVar[Mapping[str, str] | None] = ContextVar("despliegue_pinned", default=None)
_RUNNER_PIN: ContextVar[str | None] = ContextVar("despliegue_runner_pin", default=None)


class NotLoaded(LookupError):
    """The pinned tag is not loaded in this runner (it was swapped out after the API looked)."""


@contextmanager
def pinned_to(key: str, tag: str) -> Iterator[None]:
    """Within this block, calls of the runner method for model `key` answer with `tag`."""
    token = _API_PINS.set({**(_API_PINS.get() or {}), key: tag})
    try:
        yield
    finally:
        _API_PINS.reset(token)


def pinned_tag(key: str) -> str | None:
    pins = _API_PINS.get()
    return None if pins is None else pins.get(key)


def runner_pin() -> str | None:
    """The tag the runner call being answered is pinned to, if it is."""
    return _RUNNER_PIN.get()


def pinnable(
    key: str,
    everyday: Callable[[list[Item]], Awaitable[Sequence[Result]]],
    pinned: Callable[[list[Item], str], Awaitable[Sequence[Result]]],
) -> Callable[[list[Item]], Awaitable[Sequence[Result]]]:
    """The API's call of model `key`'s runner method: the everyday (coalesced) call, or the
    unbatched twin when the request is pinned to a version."""

    async def call(items: list[Item]) -> Sequence[Result]:
        tag = pinned_tag(key)
        if tag is None:
            return await everyday(items)
        return await pinned(items, tag)

    return call


def _twin(method: Any) -> Callable[..., Any]:
    """A plain function like `method.func` with a `tag` argument, answering under that pin."""
    func = method.func

    def answer_pinned(self: Any, *items: Any, tag: str, **named_items: Any) -> Any:
        token = _RUNNER_PIN.set(tag)
        try:
            return func(self, *items, **named_items)  # BentoML names the argument, as declared
        finally:
            _RUNNER_PIN.reset(token)

    this, items = list(inspect.signature(func).parameters.values())[:2]
    tag = inspect.Parameter("tag", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
    answer_pinned.__signature__ = inspect.signature(func).replace(  # type: ignore[attr-defined]
        parameters=[this, items, tag]
    )
    answer_pinned.__module__ = func.__module__
    answer_pinned.__qualname__ = answer_pinned.__name__ = func.__name__ + PINNED_SUFFIX
    answer_pinned.__doc__ = f"{func.__doc__ or ''} Answered by the loaded model `tag` only."
    return answer_pinned


def with_pinned_twins(cls: type) -> type:
    """Give every batchable `@bentoml.api` method of a runner class its unbatched twin
    `<name>_pinned` (applied below `@bentoml.service`, which then finds the twins)."""
    for name, member in list(vars(cls).items()):
        if getattr(member, "batchable", False):
            setattr(cls, name + PINNED_SUFFIX, bentoml.api(_twin(member)))
    return cls
