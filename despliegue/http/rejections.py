"""Refused inputs counted per route and reason (`despliegue_input_rejections`), in the API
worker: what clients get wrong, on the same /metrics as everything else."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any


@functools.cache
def rejections() -> Any:
    """The process's one series, created in the worker after BentoML has pointed
    prometheus_client at its multiprocess folder (so it is imported here, not above)."""
    from prometheus_client import Counter

    return Counter(
        "despliegue_input_rejections", "Refused inputs by route and reason", ["route", "reason"]
    )


class RejectionMetrics:
    """ASGI middleware counting refused inputs per route and reason (the error body's `type`,
    e.g. `missing`, `too_long`, `value_error`; or the status when the body names none)."""

    STATUSES = frozenset({400, 405, 408, 413, 415, 422})

    def __init__(self, app: Any, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status in self.STATUSES:
                if len(body) < 65536:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self.count(scope["path"], status, bytes(body))
            await send(message)

        await self.app(scope, receive, watch)

    def count(self, path: str, status: int, body: bytes) -> None:
        reason = str(status)
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            reason = str(json.loads(body)["detail"][0]["type"])
        route = path if path in self.routes else "other"
        rejections().labels(route, reason).inc()
