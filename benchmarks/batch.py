"""Batch scoring's throughput and memory: `python -m despliegue.batch`'s own loop, in process,
on generated items; prints one JSON result.

The items are drawn by the same generators as the path's HTTP bodies (benchmarks/paths.py):
flowers as JPEG files in a folder (so decoding is measured, as the API's work is), the
antibiotic panel as a Parquet column of marker vectors. Items per second count from the first
batch to the finished output (the model's load is not counted); for the panel, one item is one
(vector, antibiotic) pair, as the limit and the HTTP path count it. The process's RSS is
sampled every 0.2 s: `rss_growth_mib` (end minus the first tenth of the run) shows whether
memory stays flat however many items there are (they are streamed, never all held).

    python -m benchmarks.batch --path flowers --items 2000
    python -m benchmarks.batch --path flowers --items 20000     # the memory goal
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from benchmarks.paths import _flowers, _markers

SAMPLE_S = 0.2
# Files drawn once and written many times: drawing a flower costs more than scoring it.
DISTINCT_IMAGES = 64


def flower_folder(folder: Path, items: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(5)
    drawn = [Image.fromarray(pixels) for pixels in _flowers(rng, DISTINCT_IMAGES)]
    for index in range(items):
        sub = folder / f"{index // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        drawn[index % DISTINCT_IMAGES].save(sub / f"{index:06d}.jpg", quality=90)
    return folder


def marker_table(folder: Path, items: int) -> Path:
    table = folder / "isolates.parquet"
    vectors = _markers(np.random.default_rng(5), items)
    pd.DataFrame({"features": list(vectors)}).to_parquet(table)
    return table


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        """A sample at the start, every SAMPLE_S, and one when stopped (a short run has two)."""
        process = psutil.Process()
        while True:
            self.samples.append((time.perf_counter(), process.memory_info().rss / 2**20))
            if self.stopped.wait(SAMPLE_S):
                self.samples.append((time.perf_counter(), process.memory_info().rss / 2**20))
                return


def measure(family: str, items: int) -> dict[str, Any]:
    from despliegue.batch.families import columns_of
    from despliegue.batch.inputs import open_source
    from despliegue.batch.output import ResumableOutput
    from despliegue.batch.scoring import best_batch, cores, load_runner, run, scorer_of

    scorer = scorer_of(family)
    with tempfile.TemporaryDirectory(prefix="despliegue-batch-bench-") as work:
        folder = Path(work)
        made = time.perf_counter()
        source_path = (
            flower_folder(folder / "photos", items)
            if family == "flowers"
            else marker_table(folder, items)
        )
        made = time.perf_counter() - made
        runner = load_runner(family)
        codes = 1
        if family == "antibiotics":
            codes = sum(1 for card in runner.describe().cards if card.lane == "served")
        source = open_source(source_path, scorer.reads, None, scorer.column)
        output = ResumableOutput(folder / "scores.parquet", columns_of(scorer))
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        summary = run(family, source, output, runner, best_batch(family), {"top_k": 3})
        seconds = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
    rss = [mib for _, mib in sampler.samples] or [float("nan")]
    early = rss[: max(1, len(rss) // 10)]
    return {
        "family": family,
        "items": items,
        "refused": summary.refused,
        "codes_per_item": codes,
        "batch_size": best_batch(family),
        "cores": cores(),
        "seconds": seconds,
        "items_per_s": items * codes / seconds,
        "input_written_s": made,
        "rss_mib": {"first_tenth": max(early), "end": rss[-1], "max": max(rss)},
        "rss_growth_mib": rss[-1] - max(early),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("flowers", "antibiotics"), required=True)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.path, args.items)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# The goals of issue "batch scoring": in-process batch >= 0.8 of the model's one-core ceiling,
# and >= 5x the same items through the HTTP API.
GOAL_VS_CEILING = 0.8
GOAL_VS_HTTP = 5.0
BENCH_PATHS = ("flowers", "antibiotics")


def goals(
    batch: dict[str, Any], limit: dict[str, Any], http_points: list[dict[str, Any]], items: int
) -> dict[str, Any]:
    """The batch run against the path's one-core ceiling (the same run's limit, decoding
    included where the API decodes) and the service's best items/s through HTTP."""
    ceiling = limit.get("ceiling_items_per_s")
    http = max((p["throughput_rps"] * items for p in http_points), default=None)
    vs_ceiling = batch["items_per_s"] / ceiling if ceiling else None
    vs_http = batch["items_per_s"] / http if http else None
    return {
        **batch,
        "ceiling_items_per_s": ceiling,
        "http_best_items_per_s": http,
        "vs_ceiling": vs_ceiling,
        "vs_http": vs_http,
        "meets_ceiling_goal": vs_ceiling is not None and vs_ceiling >= GOAL_VS_CEILING,
        "meets_http_goal": vs_http is not None and vs_http >= GOAL_VS_HTTP,
    }


def markdown(result: dict[str, Any]) -> str:
    """The batch rows of the results table (README-ready)."""
    rows = [(name, path["batch"]) for name, path in result["paths"].items() if path.get("batch")]
    if not rows:
        return ""
    lines = [
        "",
        "## Batch scoring (`python -m despliegue.batch`, in process, server CPUs)",
        "",
        f"| path | items | items/s | vs one-core ceiling (goal {GOAL_VS_CEILING}) | "
        f"vs HTTP best (goal {GOAL_VS_HTTP}x) | RSS growth MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in rows:
        lines.append(
            f"| {name} | {b['items']} | {b['items_per_s']:.0f} | {_ratio(b['vs_ceiling'])} | "
            f"{_ratio(b['vs_http'])} | {b['rss_growth_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
