"""Locust stress test of one endpoint: double the users every step until the SLO breaks.

Driven by benchmarks/stress.py (`make stress`), which starts the service and passes, in the
environment: BENCH_PATH (a name from benchmarks/paths.py), BENCH_STEP_SECONDS,
BENCH_MAX_USERS, BENCH_SLO_P99_MS, BENCH_SLO_MAX_ERROR_RATE and BENCH_RESULT (a JSON file to
write). Users are closed-loop (no wait time): each sends its next request when the last one
answered. At the end of each step the step's own p99 and error rate are checked against the
SLO; the first step that breaks it ends the test, and the result names what broke.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import numpy as np
from locust import LoadTestShape, constant, events, task
from locust.contrib.fasthttp import FastHttpUser

from benchmarks.paths import by_name, encode
from benchmarks.stats import step_verdict, stress_summary

PATH = by_name(os.environ.get("BENCH_PATH", "heatflow"))
STEP_SECONDS = float(os.environ.get("BENCH_STEP_SECONDS", "10"))
MAX_USERS = int(os.environ.get("BENCH_MAX_USERS", "256"))
SLO_P99_MS = float(os.environ.get("BENCH_SLO_P99_MS", "500"))
SLO_MAX_ERROR_RATE = float(os.environ.get("BENCH_SLO_MAX_ERROR_RATE", "0.01"))
RESULT_FILE = os.environ.get("BENCH_RESULT")

_rng = np.random.default_rng(8)
BODIES = [encode(PATH, PATH.make_body(_rng)) for _ in range(256)]
USER_STEPS = [users for users in (2**i for i in range(16)) if users <= MAX_USERS]


class StepState:
    def __init__(self) -> None:
        self.index = 0
        self.latencies_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.steps: list[dict[str, Any]] = []
        self.done = False


STATE = StepState()


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **_: Any) -> None:
    STATE.latencies_ms.append(response_time)
    if exception is not None:
        STATE.errors[str(exception)[:120]] += 1


class DoublingSteps(LoadTestShape):
    """1, 2, 4, ... users, STEP_SECONDS each; stops at the first step that breaks the SLO."""

    def tick(self) -> tuple[int, float] | None:
        index = int(self.get_run_time() // STEP_SECONDS)
        if index != STATE.index:
            verdict = step_verdict(
                USER_STEPS[STATE.index],
                STEP_SECONDS,
                STATE.latencies_ms,
                STATE.errors,
                slo_p99_ms=SLO_P99_MS,
                slo_max_error_rate=SLO_MAX_ERROR_RATE,
            )
            STATE.steps.append(verdict)
            STATE.index, STATE.latencies_ms, STATE.errors = index, [], Counter()
            if verdict["broken"] or index >= len(USER_STEPS):
                STATE.done = True
        if STATE.done:
            return None
        users = USER_STEPS[index]
        return users, float(users)


class EndpointUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.sent = 0

    @task
    def post(self) -> None:
        self.sent += 1
        self.client.post(
            PATH.route,
            data=BODIES[self.sent % len(BODIES)],
            headers={"content-type": PATH.content_type},
        )


@events.quitting.add_listener
def _write_result(**_: Any) -> None:
    if RESULT_FILE:
        with open(RESULT_FILE, "w", encoding="utf-8") as handle:
            result = {
                "path": PATH.name,
                "route": PATH.route,
                "slo": {"p99_ms": SLO_P99_MS, "max_error_rate": SLO_MAX_ERROR_RATE},
                "step_seconds": STEP_SECONDS,
                **stress_summary(STATE.steps),
            }
            json.dump(result, handle, indent=2)
