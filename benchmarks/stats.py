"""The pure parts of the benchmark: percentiles, /metrics parsing, ratios, the markdown table.

Nothing here does I/O or measures time, so it is unit-tested (tests/unit/test_bench_stats.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BATCH_METRIC = "despliegue_runner_call_items"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    ms = [value * 1000.0 for value in latencies_s]
    summary = {f"p{q}_ms": percentile(ms, q) for q in (50, 95, 99)}
    summary["max_ms"] = max(ms) if ms else math.nan
    return summary


def parse_metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in a Prometheus text exposition: (labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.append((labels, float(match["v"])))
    return samples


def batch_totals(text: str, runner: str, method: str) -> tuple[float, float]:
    """(sum, count) of the adaptive batch size histogram of one runner method, over workers."""

    def total(suffix: str) -> float:
        return sum(
            value
            for labels, value in parse_metric_samples(text, BATCH_METRIC + suffix)
            if labels.get("runner_name") == runner and labels.get("method_name") == method
        )

    return total("_sum"), total("_count")


def mean_batch_size(before: str, after: str, runner: str, method: str) -> float | None:
    """Mean batch size of the batches dispatched between two /metrics scrapes."""
    sum_before, count_before = batch_totals(before, runner, method)
    sum_after, count_after = batch_totals(after, runner, method)
    batches = count_after - count_before
    return (sum_after - sum_before) / batches if batches > 0 else None


def step_verdict(
    users: int,
    seconds: float,
    latencies_ms: Sequence[float],
    errors: Mapping[str, int],
    *,
    slo_p99_ms: float,
    slo_max_error_rate: float,
) -> dict[str, Any]:
    """One stress step's figures and which SLO clause (if any) it broke."""
    failed = sum(errors.values())
    total = len(latencies_ms)
    p99 = percentile(latencies_ms, 99)
    error_rate = failed / total if total else 1.0
    broken = []
    if error_rate > slo_max_error_rate:
        broken.append(f"error rate {error_rate:.1%} > {slo_max_error_rate:.1%}")
    if not total:
        broken.append("no request answered")
    elif p99 > slo_p99_ms:
        broken.append(f"p99 {p99:.0f} ms > {slo_p99_ms:g} ms")
    return {
        "users": users,
        "requests": total,
        "ok_rps": (total - failed) / seconds,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": p99,
        "error_rate": error_rate,
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])[:5]),
        "broken": broken,
    }


def stress_summary(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The highest sustainable rate (best step within the SLO) and the first broken step."""
    sustained = [step for step in steps if not step["broken"]]
    best = max(sustained, key=lambda step: step["ok_rps"]) if sustained else None
    return {
        "max_sustainable_rps": best["ok_rps"] if best else None,
        "at_users": best["users"] if best else None,
        "failed_first": next((step for step in steps if step["broken"]), None),
        "steps": list(steps),
    }


def render_stress_markdown(result: dict[str, Any]) -> str:
    """One row per endpoint: the highest rate within the SLO and what broke it first."""
    slo = result["slo"]
    lines = [
        f"# Stress {result['date']}",
        "",
        f"Locust, closed-loop users doubled every {result['step_seconds']:g} s up to "
        f"{result['max_users']}; SLO: p99 <= {slo['p99_ms']:g} ms and error rate <= "
        f"{slo['max_error_rate']:.1%} per step. Machine: {result['machine']['cpu_model']}, "
        f"{result['machine']['cores']} cores (server CPUs {result['machine']['server_cpus']}, "
        f"locust CPUs {result['machine']['client_cpus']}).",
        "",
    ]
    rows = []
    for endpoint in result["endpoints"]:
        failed = endpoint["failed_first"]
        rows.append(
            [
                endpoint["route"],
                _fmt(endpoint["max_sustainable_rps"]),
                _fmt(endpoint["at_users"]),
                f"{failed['users']} users: " + "; ".join(failed["broken"])
                if failed
                else f"nothing up to {result['max_users']} users",
                ", ".join(f"{k} ×{v}" for k, v in failed["errors"].items())
                if failed and failed["errors"]
                else "–",
            ]
        )
    lines += _table(
        ["endpoint", "max sustainable req/s", "at users", "failed first", "errors seen"], rows
    )
    return "\n".join(lines) + "\n"


def fold_profile(lines: Iterable[str]) -> dict[str, Any]:
    """Aggregate py-spy's folded stacks (`frame;frame;... count`): samples, self counts per
    frame (function and line) and inclusive counts per function (once per stack)."""
    samples = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        own[short_frame(frames[-1])] += int(count)
        functions = {re.sub(r":\d+\)$", ")", short_frame(frame)) for frame in frames}
        for function in functions:
            inclusive[function] += int(count)
    return {"samples": samples, "self": own, "inclusive": inclusive}


def short_frame(frame: str) -> str:
    """`func (/venv/lib/python3.11/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`;
    standard library frames get `stdlib/`, the project's own keep their relative path."""
    match = re.search(r"^(.*) \((.+)\)$", frame)
    if match is None:
        return frame
    function, location = match[1], match[2]
    for marker, prefix in (("/site-packages/", ""), ("/lib/python3.11/", "stdlib/")):
        if marker in location:
            location = prefix + location.rsplit(marker, 1)[1]
            break
    else:
        location = re.sub(r"^.*/(benchmarks|despliegue|runners)/", r"\1/", location)
    return f"{function} ({location})"


def frame_package(frame: str) -> str:
    """The package a frame belongs to (`sklearn`, `opentelemetry`, `stdlib/asyncio`, ...)."""
    match = re.search(r"\(([^()]+?)(?::\d+)?\)$", short_frame(frame))
    if match is None:
        return "?"
    parts = match[1].split("/")
    package = "/".join(parts[:2]) if parts[0] == "stdlib" else parts[0]
    return package or "?"


def render_profile(name: str, profile: dict[str, Any], top: int = 15) -> str:
    """One process's profile: self samples by package (where the CPU goes: the model's
    libraries vs the HTTP stack vs tracing), then the heaviest functions, inclusive and self.
    The trunk every sample passes through (event loop, CLI) is left out of the inclusive list.
    """
    samples = profile["samples"] or 1
    lines = [f"## {name} ({profile['samples']} samples)", "", "Self samples by package:", ""]
    packages: Counter[str] = Counter()
    for frame, count in profile["self"].items():
        packages[frame_package(frame)] += count
    lines += [
        f"- {count / samples:6.1%}  {package}" for package, count in packages.most_common(top)
    ]
    trunk = 0.95 * max(profile["inclusive"].values(), default=0)
    inclusive = [
        (function, count) for function, count in profile["inclusive"].most_common() if count < trunk
    ][:top]
    lines += ["", "Inclusive (with callees):", ""]
    lines += [f"- {count / samples:6.1%}  {function}" for function, count in inclusive]
    lines += ["", "Self:", ""]
    lines += [
        f"- {count / samples:6.1%}  {frame}" for frame, count in profile["self"].most_common(top)
    ]
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator or math.isnan(denominator) or math.isnan(numerator):
        return None
    return numerator / denominator


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _fmt_ratio(value: float | None) -> str:
    """Three significant digits: a ratio of 0.004 must not print as 0.00."""
    return "–" if value is None else f"{value:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def point_at(points: Sequence[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((p for p in points if p["concurrency"] == concurrency), None)


def ratios_for(path_result: dict[str, Any], concurrency: int) -> dict[str, float | None]:
    """The compared figures of one path at one concurrency: all from the same run.

    The service is compared in items/s with the in-process limit (one item per request unless
    the path says otherwise), and in requests/s with batching off, with the seed's design and
    with `mlflow models serve`.
    """
    on = point_at(path_result["designs"].get("batching_on", []), concurrency)
    off = point_at(path_result["designs"].get("batching_off", []), concurrency)
    no_drift = point_at(path_result["designs"].get("drift_off", []), concurrency)
    seed = point_at(path_result["designs"].get("seed", []), concurrency)
    mlflow = point_at(path_result["designs"].get("mlflow", []), concurrency)
    v2 = point_at(path_result["designs"].get("v2", []), concurrency)
    mlserver = point_at(path_result["designs"].get("mlserver", []), concurrency)
    limit_result = path_result.get("limit") or {}
    limit = limit_result.get("best_items_per_s")
    ceiling = limit_result.get("ceiling_items_per_s", limit)
    items = path_result.get("items_per_request", 1)

    def field(point: dict[str, Any] | None, key: str) -> float | None:
        return point[key] if point else None

    on_rps = field(on, "throughput_rps")
    on_items = on_rps * items if on_rps is not None else None
    peers = [
        point
        for design in PEERS
        if (point := point_at(path_result["designs"].get(design, []), concurrency))
    ]
    return {
        "service_vs_limit": ratio(on_items, limit),
        "service_vs_ceiling": ratio(on_items, ceiling),
        "batching_on_vs_off": ratio(on_rps, field(off, "throughput_rps")),
        # What drift monitoring costs: the service as shipped over the same without capture.
        "drift_on_vs_off": ratio(on_rps, field(no_drift, "throughput_rps")),
        "service_vs_seed": ratio(on_rps, field(seed, "throughput_rps")),
        "p99_service_vs_seed": ratio(field(on, "p99_ms"), field(seed, "p99_ms")),
        "service_vs_mlflow": ratio(on_rps, field(mlflow, "throughput_rps")),
        # One protocol, two servers: the service's V2 route over MLServer's, same bodies.
        "v2_vs_mlserver": ratio(field(v2, "throughput_rps"), field(mlserver, "throughput_rps")),
        "p99_v2_vs_mlserver": ratio(field(v2, "p99_ms"), field(mlserver, "p99_ms")),
        # What the V2 envelope costs against the seed route on the same server.
        "v2_vs_seed_route": ratio(field(v2, "throughput_rps"), on_rps),
        # Against the best peer on each measure: the highest throughput, the lowest latency.
        "service_vs_best_peer": ratio(
            on_rps, max((p["throughput_rps"] for p in peers), default=None)
        ),
        "p99_service_vs_best_peer": ratio(
            field(on, "p99_ms"), min((p["p99_ms"] for p in peers), default=None)
        ),
        "p50_service_vs_best_peer": ratio(
            field(on, "p50_ms"), min((p["p50_ms"] for p in peers), default=None)
        ),
    }


def batching_gain(limit: dict[str, Any]) -> float | None:
    """The model's own throughput at its best batch over batch 1 (None without batch 1)."""
    per_size = limit.get("items_per_s") or {}
    return ratio(limit.get("best_items_per_s"), per_size.get("1"))


DESIGN_LABELS = {
    "batching_on": "service, batching on",
    "batching_off": "service, batching off",
    "drift_off": "service, drift capture off",
    "seed": "seed design (FastAPI)",
    "mlflow": "mlflow models serve",
    "blazeface": "service, BlazeFace detector",
    "ray": "Ray Serve (@serve.batch)",
    "mlserver": "MLServer (adaptive batching)",
    "v2": "service, V2 route (MLServer's body)",
}
# The peer model servers (benchmarks/peers/): "service / best peer" takes the best of these.
PEERS = ("ray", "mlserver")


SKLEARN_PATHS = ("heatflow", "falsetrue")
IMAGES_PER_S_GOALS = {"face": 100}  # a 512 px photo per request


def goals(result: dict[str, Any], many: int = 32) -> list[dict[str, Any]]:
    """The performance goals, each with its measured ratio from this run, whether it is met,
    and the bound the same run measured for it: what a server doing nothing but the model
    (and the API's decoding) on the same core could reach, in the same ratio (None where
    the run measures none). `many` is the concurrency the goals name ("32 clients")."""
    rows: list[dict[str, Any]] = []

    def add(measure: str, goal: str, value: float | None, bound: float | None = None) -> None:
        """`goal` is ">= X" or "<= X"; met is None where the run measured no value."""
        sign, target = goal.split()
        met = None
        if value is not None:
            met = value >= float(target) if sign == ">=" else value <= float(target)
        rows.append({"measure": measure, "goal": goal, "value": value, "met": met, "bound": bound})

    for name, path in result["paths"].items():
        many_r, one_r = ratios_for(path, many), ratios_for(path, 1)
        ceiling = (path.get("limit") or {}).get("ceiling_items_per_s")
        items = path.get("items_per_request", 1)
        peers = [
            point for design in PEERS if (point := point_at(path["designs"].get(design, []), many))
        ]
        best_peer_rps = max((p["throughput_rps"] for p in peers), default=None)
        best_peer_p99 = min((p["p99_ms"] for p in peers), default=None)
        # Closed loop: `many` clients at the ceiling's rate wait many/rate each at best.
        least_latency_ms = 1000.0 * many * items / ceiling if ceiling else None
        value = many_r["service_vs_best_peer"]
        add(
            f"{name}: service / best peer, req/s, {many} clients",
            ">= 1.5",
            value,
            ratio(ceiling / items if ceiling else None, best_peer_rps),
        )
        value = many_r["p99_service_vs_best_peer"]
        add(
            f"{name}: service / best peer, p99, {many} clients",
            "<= 1.0",
            value,
            ratio(least_latency_ms, best_peer_p99),
        )
        value = one_r["p50_service_vs_best_peer"]
        seed_one = point_at(path["designs"].get("seed", []), 1)
        lone_peers = [
            point for design in PEERS if (point := point_at(path["designs"].get(design, []), 1))
        ]
        add(
            f"{name}: lone client p50, service / best peer",
            "<= 1.2",
            value,
            # A plain FastAPI process calling the model: what one HTTP hop needs.
            ratio(
                seed_one["p50_ms"] if seed_one else None,
                min((p["p50_ms"] for p in lone_peers), default=None),
            ),
        )
        if name in SKLEARN_PATHS:
            for concurrency, r in ((1, one_r), (many, many_r)):
                value = r["service_vs_seed"]
                add(
                    f"{name}: service / plain FastAPI, req/s, {concurrency} client(s)",
                    ">= 0.8",
                    value,
                )
        if name in IMAGES_PER_S_GOALS:
            on = point_at(path["designs"].get("blazeface", []), many)
            value = on["throughput_rps"] * items if on else None
            least = IMAGES_PER_S_GOALS[name]
            add(
                f"{name}: images/s with the fast detector (BlazeFace), {many} clients",
                f">= {least}",
                value,
                # The detector's own in-process rate: benchmarks/faces_quality.py.
                None,
            )
        if name == "flowers":
            value = many_r["service_vs_ceiling"]
            add(
                f"flowers: service / one-core ceiling, {many} clients",
                ">= 0.7",
                value,
            )
    readyz = (result.get("cold_start") or {}).get("readyz_s")
    add(
        "cold start to /readyz, all families (s)",
        "<= 12",
        readyz,
    )
    return rows


def render_goals(result: dict[str, Any]) -> list[str]:
    rows = [
        [
            goal["measure"],
            goal["goal"],
            _fmt_ratio(goal["value"]),
            {True: "met", False: "missed", None: "not measured"}[goal["met"]],
            _fmt_ratio(goal["bound"]),
        ]
        for goal in goals(result)
    ]
    return [
        "## Goals (same run)",
        "",
        *_table(["measure", "goal", "measured", "", "bound on this core"], rows),
        "",
        "The bound is the same ratio for a server that did nothing but the model at its best "
        "batch (and the API's image decoding) on the server core: for req/s, the one-core "
        "ceiling over the peer; for p99, the closed-loop least latency (clients / ceiling) "
        "over the peer's p99; for the lone client, a plain FastAPI process's p50 over the "
        "peer's.",
        "",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    """The results table: absolutes per design and concurrency, then the ratios."""
    machine = result["machine"]
    lines = [
        f"# Benchmark {result['date']}",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores; "
        f"server on CPUs {machine['server_cpus']}, load generator on CPUs "
        f"{machine['client_cpus']}; Python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + f". {result['settings']['seconds']:g} s per point"
        + (
            f" ({slow:g} s on /face and /super)"
            if (slow := result["settings"].get("slow_seconds"))
            not in (None, result["settings"]["seconds"])
            else ""
        )
        + f" after {result['settings']['warmup']:g} s warm-up.",
        "",
    ]
    cold = result.get("cold_start") or {}
    if cold:
        lines += [
            f"Cold start (`bentoml serve` to 200): /readyz {_fmt(cold.get('readyz_s'), 2)} s, "
            f"/models (every family loaded) {_fmt(cold.get('models_s'), 2)} s.",
            "",
        ]
        if cold.get("cpu_s"):
            lines += [
                "CPU seconds each process used until then: "
                + ", ".join(f"{name} {_fmt(cpu, 1)}" for name, cpu in cold["cpu_s"].items())
                + "; peers to ready: "
                + (", ".join(f"{p} {_fmt(cold.get(f'{p}_s'), 1)} s" for p in PEERS) or "–")
                + ".",
                "",
            ]
    lines += [f"**Warning:** {warning}" for warning in result.get("warnings", [])]
    if result.get("warnings"):
        lines.append("")
    lines += render_goals(result)
    lines += [f"**Note:** {note}" for note in result.get("notes", [])]
    lines += ["## Physical limit (runner method called in-process)", ""]
    limit_rows = []
    for name, path in result["paths"].items():
        limit = path.get("limit") or {}
        per_size = ", ".join(
            f"{size}: {_fmt(rate, 0)}" for size, rate in limit.get("items_per_s", {}).items()
        )
        limit_rows.append(
            [
                name,
                _fmt(limit.get("best_items_per_s"), 0),
                _fmt(limit.get("best_batch_size")),
                _fmt(batching_gain(limit)),
                _fmt(limit.get("api_work_items_per_s"), 0),
                _fmt(limit.get("ceiling_items_per_s"), 0),
                per_size or "–",
            ]
        )
    lines += _table(
        [
            "path",
            "best items/s",
            "at batch",
            "best / batch 1",
            "API decode items/s",
            "one-core ceiling",
            "items/s by batch size",
        ],
        limit_rows,
    )
    lines += [
        "",
        "best / batch 1 is what batching can buy in the model itself: with batching off every "
        "request is a batch of one. The one-core ceiling adds the API's own per-request work "
        "(image decoding), timed in-process: 1 / (1/limit + 1/decode); no server on this core "
        "can answer more.",
    ]
    lines += ["", "## Through HTTP", ""]
    rows = []
    for name, path in result["paths"].items():
        for design, points in path["designs"].items():
            for point in points:
                rows.append(
                    [
                        name,
                        DESIGN_LABELS.get(design, design),
                        str(point["concurrency"]),
                        _fmt(point["throughput_rps"]),
                        _fmt(point["p50_ms"]),
                        _fmt(point["p95_ms"]),
                        _fmt(point["p99_ms"]),
                        str(point["errors"]),
                        _fmt(point.get("mean_batch_size")),
                        _fmt(point.get("client_cpu_util"), 2),
                    ]
                )
    lines += _table(
        [
            "path",
            "design",
            "clients",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "mean batch",
            "client CPU",
        ],
        rows,
    )
    lines += ["", "## Ratios (same run)", ""]
    ratio_rows = []
    for name, path in result["paths"].items():
        for concurrency in result["settings"]["concurrency"]:
            r = ratios_for(path, concurrency)
            ratio_rows.append(
                [
                    name,
                    str(concurrency),
                    _fmt_ratio(r["service_vs_limit"]),
                    _fmt_ratio(r["service_vs_ceiling"]),
                    _fmt_ratio(r["batching_on_vs_off"]),
                    _fmt_ratio(r["drift_on_vs_off"]),
                    _fmt_ratio(r["service_vs_seed"]),
                    _fmt_ratio(r["p99_service_vs_seed"]),
                    _fmt_ratio(r["service_vs_mlflow"]),
                    _fmt_ratio(r["service_vs_best_peer"]),
                    _fmt_ratio(r["p99_service_vs_best_peer"]),
                    _fmt_ratio(r["p50_service_vs_best_peer"]),
                ]
            )
    lines += _table(
        [
            "path",
            "clients",
            "service / limit",
            "service / ceiling",
            "batching on / off",
            "drift capture on / off",
            "service / seed design",
            "p99 service / seed",
            "service / mlflow serve",
            "service / best peer",
            "p99 service / best peer",
            "p50 service / best peer",
        ],
        ratio_rows,
    )
    lines += [
        "",
        "service / limit compares items/s; the other ratios compare req/s (> 1: the service "
        "leads), except p99 and p50 (< 1: the service answers faster). The best peer is the "
        "best of Ray Serve and MLServer on each measure (highest req/s, lowest p99, lowest "
        "p50). A client CPU near 1.00 means the load generator, not the server, was the "
        "bottleneck for that point.",
        "",
    ]
    return "\n".join(lines)
