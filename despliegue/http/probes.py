"""/livez and /readyz of the public service: answered at once, and true.

BentoML 1.4.39's own /readyz asks each runner `is_ready(5)`; aiohttp's total timeout raises
`asyncio.TimeoutError`, which `is_ready` does not catch, and BentoML's TimeoutMiddleware then
waits the whole `traffic.timeout` (60 s) for a response that never starts, so uvicorn answers
500 ("ASGI callable returned without starting response"). A /readyz sent while a runner was
loading or down therefore hung 5-65 s and often answered 500.

Here the service answers both probes itself, in front of every other middleware:

- /livez (and BentoML's alias /healthz): 200 while this API process runs its event loop;
  nothing else is asked, so it answers in milliseconds whatever the runners do.
- /readyz: 200 when every runner of the service (each `bentoml.depends`, a local process or a
  remote tier; a runner inside the API worker is ready once the worker serves) answered its own
  /readyz with 200 at the last check; otherwise 503 with a JSON
  body naming each runner that did not and why.

A watcher asks every runner, all at once, every WATCH_INTERVAL_S, each within RUNNER_TIMEOUT_S.
Answering /readyz from its last result keeps the probe as cheap as /livez however often it is
called (a busy 2-core machine made live checks miss the 1 s budget now and then), and the log
says when the service becomes ready ("ready: serving N families at URL, auth on") and when it
stops being ready and why, whether or not anything probes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue import registry
from despliegue.bentoml_compat import service_urls

# Every WATCH_INTERVAL_S all runners are asked at once, each given RUNNER_TIMEOUT_S; /readyz
# answers from the last check, so it costs no more than /livez. A check older than
# STALE_AFTER_S is not trusted. Both probes answer within ANSWER_WITHIN_S (deploy/ allows 2 s).
RUNNER_TIMEOUT_S = 0.5
WATCH_INTERVAL_S = 1.0
STALE_AFTER_S = 5.0
ANSWER_WITHIN_S = 1.0
LIVENESS_PATHS = frozenset({"/livez", "/healthz"})
READINESS_PATH = "/readyz"

logger = logging.getLogger("despliegue.probes")
# BentoML's server logging leaves the root logger at WARNING; these two lines must show.
logger.setLevel(logging.INFO)


async def runner_problem(runner: Any, timeout_s: float = RUNNER_TIMEOUT_S) -> str | None:
    """Why a runner is not ready, or None when its /readyz answers 200 within `timeout_s`."""
    is_ready = getattr(runner, "is_ready", None)
    if is_ready is None:  # a runner inside this process (placement "api", development mode)
        return None
    try:
        async with asyncio.timeout(timeout_s):
            ready = await is_ready()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:  # refused, reset, session closed: all mean "cannot serve now"
        return f"unreachable ({type(exc).__name__})"
    return None if ready else "answered not ready"


@dataclass
class Readiness:
    """What the last check found about the runners of one API process; logs each change."""

    runners: dict[str, tuple[str, Any]]  # family -> (runner service name, its client)
    url: str
    auth_on: bool
    problems: dict[str, str] = field(default_factory=dict)  # family -> why it is not ready
    checked_at: float | None = None  # time.monotonic() of the last check; None before it

    def current(self) -> dict[str, str]:
        """Not-ready families with the reason (empty: all ready), as of the last check."""
        if self.checked_at is None:
            return {"service": "starting: runners not asked yet"}
        age = time.monotonic() - self.checked_at
        if age > STALE_AFTER_S:
            return {"service": f"runners last asked {age:.0f} s ago"}
        return self.problems

    async def check(self) -> None:
        families = list(self.runners)
        answers = await asyncio.gather(
            *(runner_problem(client) for _, client in self.runners.values())
        )
        problems = {
            family: f"{self.runners[family][0]}: {problem}"
            for family, problem in zip(families, answers, strict=True)
            if problem is not None
        }
        was_ready = self.checked_at is not None and not self.problems
        if not problems and not was_ready:
            logger.info(
                "ready: serving %d families (%s) at %s, auth %s",
                len(self.runners),
                ", ".join(self.runners),
                self.url,
                "on" if self.auth_on else "off",
            )
        elif problems and was_ready:
            logger.warning(
                "not ready: %s", "; ".join(f"{family}: {why}" for family, why in problems.items())
            )
        self.problems, self.checked_at = problems, time.monotonic()

    async def watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # keep watching; /readyz reports the check as stale meanwhile
                logger.exception("readiness check failed")
            await asyncio.sleep(WATCH_INTERVAL_S)


def readiness_of(service: Any, auth_on: bool) -> Readiness:
    """The Readiness of the running instance of `service` (a BentoML service class)."""
    import bentoml

    instance = bentoml.get_current_service()
    # Every family: a runner process or tier (`bentoml.depends`), or an instance inside this
    # worker (placement "api": ready once this worker serves, since it loads before listening).
    runners = {
        family.name: (family.service_name, getattr(instance, family.name))
        for family in sorted(registry.FAMILIES, key=lambda family: family.name)
    }
    # BentoML hands every worker the URL of each service, its own included.
    url = service_urls().get(service.name, "this server's port")
    return Readiness(runners=runners, url=url, auth_on=auth_on)


class Probes:
    """ASGI middleware answering /livez, /healthz and /readyz before anything else runs.

    It also follows the lifespan: once BentoML has created the service instance (startup
    complete) it starts the readiness watcher, and stops it when shutdown begins.
    """

    def __init__(self, app: ASGIApp, service: Any, auth_on: bool) -> None:
        self.app = app
        self.service = service
        self.auth_on = auth_on
        self.readiness: Readiness | None = None
        self.watcher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._stop_watching_on_shutdown(receive), self._start(send))
            return
        if scope["type"] != "http" or scope["method"] not in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in LIVENESS_PATHS:
            await respond(scope, send, 200, {"alive": True})
        elif path == READINESS_PATH:
            await self.answer_readiness(scope, send)
        else:
            await self.app(scope, receive, send)

    async def answer_readiness(self, scope: Scope, send: Send) -> None:
        if self.readiness is None:
            not_ready = {"service": "starting"}
            families: list[str] = []
        else:
            not_ready = self.readiness.current()
            families = list(self.readiness.runners)
        body = {"ready": not not_ready, "not_ready": not_ready, "families": families}
        await respond(scope, send, 503 if not_ready else 200, body)

    def _start(self, send: Send) -> Send:
        async def send_and_start(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.readiness = readiness_of(self.service, self.auth_on)
                self.watcher = asyncio.create_task(self.readiness.watch())
            await send(message)

        return send_and_start

    def _stop_watching_on_shutdown(self, receive: Receive) -> Receive:
        async def receive_and_stop() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self.watcher is not None:
                self.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.watcher
            return message

        return receive_and_stop


async def respond(scope: Scope, send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
