"""Probing a starting server the way Kubernetes does, and what its answers must be.

A new connection for every probe, a client timeout of ANSWER_WITHIN_S that must never trip,
/readyz then /livez every PROBE_INTERVAL_S. Before the API process listens, the port refuses
connections; from the first HTTP answer on, /livez answers 200 and /readyz 200 or 503 with a
JSON body naming what is not ready, never 500, never late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from despliegue.http.probes import ANSWER_WITHIN_S
from despliegue.registry import FAMILIES as REGISTERED
from tests.conftest import LiveServer

PROBE_INTERVAL_S = 0.1
REFUSED = "refused"
# The service's runners (one bentoml.depends per registry family), in the order /readyz lists them.
FAMILIES = sorted(family.name for family in REGISTERED)


@dataclass(frozen=True)
class ProbeAnswer:
    at_s: float  # since the server was launched
    path: str
    status: int | None  # None: no HTTP answer (see error)
    body: dict[str, Any] | None
    error: str | None = None

    def __str__(self) -> str:
        outcome = self.status if self.error is None else self.error
        return f"{self.at_s:7.2f}s {self.path} {outcome} {self.body or ''}"


def probe(client: httpx.Client, url: str, path: str, launched: float) -> ProbeAnswer:
    at = time.monotonic() - launched
    try:
        response = client.get(f"{url}{path}")
    except httpx.ConnectError:
        return ProbeAnswer(at, path, None, None, REFUSED)
    except httpx.TimeoutException:
        return ProbeAnswer(at, path, None, None, f"no answer within {ANSWER_WITHIN_S:g} s")
    except httpx.HTTPError as exc:
        return ProbeAnswer(at, path, None, None, type(exc).__name__)
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:200]}
    return ProbeAnswer(at, path, response.status_code, body)


def probe_until(
    server: LiveServer, launched: float, done: Callable[[ProbeAnswer], bool], deadline_s: float
) -> list[ProbeAnswer]:
    """Probe until `done` holds for an answer; every answer is returned."""
    answers: list[ProbeAnswer] = []
    deadline = time.monotonic() + deadline_s
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=ANSWER_WITHIN_S, limits=limits) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                log = server.log()[-4000:]
                pytest.fail(f"server exited with {server.process.returncode}:\n{log}")
            for path in ("/readyz", "/livez"):
                answers.append(probe(client, server.url, path, launched))
                if done(answers[-1]):
                    return answers
            time.sleep(PROBE_INTERVAL_S)
    timeline = "\n".join(map(str, answers[-20:]))
    pytest.fail(f"not done in {deadline_s} s; last answers:\n{timeline}\n{server.log()[-3000:]}")


def is_ready(answer: ProbeAnswer) -> bool:
    return answer.path == "/readyz" and answer.status == 200


def names_not_ready(family: str) -> Callable[[ProbeAnswer], bool]:
    def done(answer: ProbeAnswer) -> bool:
        return answer.status == 503 and family in (answer.body or {}).get("not_ready", {})

    return done


def assert_truthful(
    answers: list[ProbeAnswer], before_listening: Collection[str] | None = (REFUSED,)
) -> None:
    """No HTTP answer only before the first one, and then only as `before_listening` says
    (None: any transport error, e.g. behind a container engine's port forwarding); then
    /livez 200, /readyz 200 or a 503 naming what is not ready, each within the timeout."""
    timeline = "\n".join(map(str, answers))
    first_answer = next(i for i, a in enumerate(answers) if a.status is not None)
    for index, answer in enumerate(answers):
        where = f"{answer}\n--- every answer:\n{timeline}"
        if answer.status is None:
            assert index < first_answer, where
            assert before_listening is None or answer.error in before_listening, where
        elif answer.path == "/livez":
            assert answer.status == 200, where
        elif answer.status == 200:
            assert answer.body == {"ready": True, "not_ready": {}, "families": FAMILIES}, where
        else:
            assert answer.status == 503, where
            assert answer.body is not None and answer.body["ready"] is False, where
            assert answer.body["not_ready"], where
            assert set(answer.body["not_ready"]) <= {*FAMILIES, "service"}, where
