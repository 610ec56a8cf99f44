"""Prometheus series of the lifecycle: answers per model tag (the API), runner batches per lane
and the shadow comparisons (the runners). Created on first use, in the worker that counts them
(see despliegue/coalescing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from despliegue.contracts import Answered

_metrics: dict[str, Any] = {}


def _metric(kind: str, name: str, text: str, labels: list[str]) -> Any:
    if name not in _metrics:
        import prometheus_client

        _metrics[name] = getattr(prometheus_client, kind)(name, text, labelnames=labels)
    return _metrics[name]


def api_requests() -> Any:
    return _metric(
        "Counter",
        "despliegue_model_requests",
        "Requests answered, by family and the model tag that answered",
        ["family", "model_tag"],
    )


def runner_calls() -> Any:
    return _metric(
        "Counter",
        "despliegue_model_batches",
        "Runner batches by family, model tag, lane (served, canary, shadow) and outcome",
        ["family", "model_tag", "lane", "outcome"],
    )


def runner_seconds() -> Any:
    return _metric(
        "Histogram",
        "despliegue_model_batch_seconds",
        "Time of one model call on a runner batch, by family, model tag and lane",
        ["family", "model_tag", "lane"],
    )


def shadow_compared() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_compared",
        "Answer items the shadow model also answered",
        ["family", "served_tag", "shadow_tag"],
    )


def shadow_agreed() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_agreed",
        "Shadow answer items that agree with the served model's",
        ["family", "served_tag", "shadow_tag"],
    )


def shadow_difference() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_absolute_difference",
        "Sum of absolute differences between shadow and served answers (divide by compared)",
        ["family", "served_tag", "shadow_tag"],
    )


def unzip(answers: Sequence[Answered], family: str) -> tuple[list[Any], list[str]]:
    """The answers of one request, and the tags that answered it (in the API), counted.

    One tag, except for a request split across two runner batches while a canary runs or a
    swap happens: responses then name both, comma-separated."""
    tags = list(dict.fromkeys(item.model_tag for item in answers))
    for tag in tags:
        api_requests().labels(family=family, model_tag=tag).inc()
    return [item.answer for item in answers], tags
