"""The soak's short version: `make soak` runs every family for 30 minutes at 70% of the
measured capacity (benchmarks/soak.py); here the same for 3 minutes, on a server of its own.
Goal, as for the long run: no failed request, and no process's memory growing after warm-up."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.soak import render_markdown, soak
from tests.conftest import ADMIN_TOKEN, start_server, stop_server, wait_until_serving

pytestmark = pytest.mark.integration


def test_three_minute_soak_has_no_errors_and_flat_memory(
    reference_store: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(Path(reference_store) / "models", home / "models")
    log_path = tmp_path / "serve.log"
    process = start_server(str(home), log_path)
    url = f"http://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    try:
        wait_until_serving(url, process, log_path)
        result = asyncio.run(
            soak(
                url,
                process.pid,
                minutes=3,
                capacity_seconds=8,
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        )
    finally:
        stop_server(process)
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n" + render_markdown(result))
    assert result["requests"] > 0
    assert result["errors"] == 0, result["statuses"]
    growth = result["rss_growth_after_warmup"]
    assert {"Despliegue", "FaceAnalyzer", "FlowerClassifier"} <= growth.keys()
    grew = {name: g["growth_pct"] for name, g in growth.items() if g["growth_pct"] >= 10}
    assert not grew, growth
