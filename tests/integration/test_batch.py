"""Batch scoring answers as the API does: the same items through `python -m despliegue.batch`
(in this process, on the session's model store) and through the session's live server give
the same answer fields, the same model tag, and the same reason for an item the API refuses.
Also: a stopped run resumes with only the missing items, and `--model` scores with a
candidate."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.dummy import DummyRegressor

from despliegue.batch.__main__ import main
from despliegue.batch.families import HEATFLOW, columns_of
from despliegue.batch.inputs import open_source
from despliegue.batch.output import ResumableOutput
from despliegue.batch.scoring import load_runner, run
from tests.conftest import (
    LIFECYCLE_STATE_ENV,
    ROOT,
    LiveServer,
    lifecycle_state,
    private_home,
    run_save_models,
)
from tests.image_samples import TEXT_CALLED_JPG, photo, truncated_png

pytestmark = pytest.mark.integration

GOOD_IMAGES = ("astronaut.jpg", "sub/coffee.png", "sub/deeper/chelsea.jpg")
THICKNESSES = [0.0, 250.0, 1500.0, 6000.0, 14999.5]


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    """The output's rows by item, nulls as None."""
    rows = pq.read_table(path).to_pylist()
    clean = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]
    return {row["item"]: row for row in clean}


def scored(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--no-progress"]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three photos in nested folders, a truncated PNG and a CSV called .jpg."""
    folder = tmp_path_factory.mktemp("images")
    for name, sample in zip(GOOD_IMAGES, ("astronaut", "coffee", "chelsea"), strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(sample)).save(folder / name)
    (folder / "truncated.png").write_bytes(truncated_png())
    (folder / "sub" / "prices.jpg").write_bytes(TEXT_CALLED_JPG)
    return folder


def refusal_of(response: Any) -> str:
    assert 400 <= response.status_code < 500, response.text
    return response.json()["error"]


def test_heatflow_rows_are_the_api_answers_and_its_refusals(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "wells.csv"
    pd.DataFrame({"depth": [*THICKNESSES, -5.0, "deep"]}).to_csv(table, index=False)
    output = tmp_path / "heatflow.parquet"
    scored(["heatflow", str(table), "--column", "depth", "-o", str(output)], capsys)
    rows = rows_of(output)
    api = live_server.post("/heatflow", {"sediment_thickness_m": THICKNESSES}).json()
    for index, value in enumerate(api["heat_flow_mw_m2"]):
        row = rows[str(index)]
        assert row["heat_flow_mw_m2"] == value and row["model_tag"] == api["model"], row
        assert row["sediment_thickness_m"] == api["sediment_thickness_m"][index]
        assert row["unit"] == api["unit"] and row["error"] is None
    negative = rows[str(len(THICKNESSES))]
    assert negative["heat_flow_mw_m2"] is None
    assert negative["error"] in refusal_of(
        live_server.post("/heatflow", {"sediment_thickness_m": -5})
    )
    assert rows[str(len(THICKNESSES) + 1)]["error"] == "not a number: 'deep'"


def test_falsetrue_lines_are_the_api_answers(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["El banco central publicó su informe anual.", "¡Los médicos odian este truco!"]
    lines = tmp_path / "news.txt"
    lines.write_text("\n".join(texts) + "\n")
    output = tmp_path / "news.parquet"
    scored(["falsetrue", str(lines), "-o", str(output)], capsys)
    rows = rows_of(output)
    api = live_server.post("/falsetrue", {"texts": texts}).json()
    for line, label, probability in zip(
        ("1", "2"), api["is_falsetrue"], api["probability_real"], strict=True
    ):
        assert (rows[line]["is_falsetrue"], rows[line]["probability_real"]) == (label, probability)
        assert rows[line]["model_tag"] == api["model"]


def test_flowers_rows_are_the_api_answers_and_unreadable_files_are_rows_with_the_reason(
    live_server: LiveServer, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "flowers.parquet"
    out = scored(["flowers", str(image_folder), "-o", str(output), "--top-k", "4"], capsys)
    assert "3 scored, 2 refused, 0 already" in out
    rows = rows_of(output)
    assert sorted(rows) == sorted([*GOOD_IMAGES, "truncated.png", "sub/prices.jpg"])
    files = [("images", (n, (image_folder / n).read_bytes(), "image/png")) for n in GOOD_IMAGES]
    api = live_server.upload("/flowers/upload", files, data={"top_k": "4"}).json()
    for name, answer in zip(GOOD_IMAGES, api["predictions"], strict=True):
        row = rows[name]
        assert row["name"] == answer["name"] and row["confidence"] == answer["confidence"]
        assert row["class_id"] == answer["class_id"]
        assert json.loads(row["top_k"]) == answer["top_k"]
        assert (row["threshold"], row["model_tag"]) == (api["threshold"], api["model"])
    for broken in ("truncated.png", "sub/prices.jpg"):
        response = live_server.upload(
            "/flowers/upload",
            [("images", (broken, (image_folder / broken).read_bytes(), "image/png"))],
        )
        assert rows[broken]["model_tag"] is None
        assert rows[broken]["error"] and rows[broken]["error"] in refusal_of(response), broken


def test_face_verdicts_are_the_super_endpoints(
    live_server: LiveServer, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "faces.csv"
    scored(["faces", str(image_folder), "-o", str(output)], capsys)
    table = pd.read_csv(output, dtype={"item": str}).set_index("item")
    for name in GOOD_IMAGES:
        files = [("input_data", (name, (image_folder / name).read_bytes(), "image/png"))]
        api = live_server.upload("/super/upload", files).json()
        (verdict,) = api["images"]
        row = table.loc[name]
        assert (bool(row["result"]), row["score"]) == (verdict["result"], verdict["score"])
        assert json.loads(row["faces"]) == verdict["faces"]
        assert (row["detector"], row["model_tag"]) == (api["detector"], api["model"])
    assert bool(table.loc["astronaut.jpg", "result"])  # the one face among them


def test_antibiotic_rows_are_the_panels_answers(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors = [[1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0], [0, 1] * 8]
    table = tmp_path / "isolates.parquet"
    pd.DataFrame({"features": [*vectors, [1.0, 2.0]]}).to_parquet(table)
    output = tmp_path / "panel.parquet"
    scored(["antibiotics", str(table), "-o", str(output)], capsys)
    rows = rows_of(output)
    api = live_server.post("/antibiotics", {"features": vectors}).json()["results"]
    for index in range(len(vectors)):
        row = rows[str(index)]
        assert json.loads(row["predicted_class"]) == {
            r["code"]: r["predictions"][index]["predicted_class"] for r in api
        }
        assert json.loads(row["probabilities"]) == {
            r["code"]: r["predictions"][index]["probabilities"] for r in api
        }
        assert set(row["model_tag"].split(",")) == {r["model"] for r in api}
    short = live_server.post("/antibiotics", {"features": [[1.0, 2.0]]})
    assert rows["2"]["error"] in refusal_of(short)


def test_a_stopped_run_resumes_with_only_the_missing_items(
    reference_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "wells.csv"
    pd.DataFrame({"sediment_thickness_m": [float(i * 37) for i in range(50)]}).to_csv(
        table, index=False
    )
    output = tmp_path / "resumed.parquet"
    runner = load_runner("heatflow")
    source = open_source(table, HEATFLOW.reads, None, HEATFLOW.column)

    def stop_after_two_batches(done: int, seen: list[int] = []) -> None:  # noqa: B006
        seen.append(done)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            "heatflow",
            source,
            ResumableOutput(output, columns_of(HEATFLOW)),
            runner,
            10,
            {},
            stop_after_two_batches,
        )
    assert not output.exists()  # the parts hold what was scored
    out = scored(["heatflow", str(table), "-o", str(output), "--batch-size", "10"], capsys)
    assert "30 scored, 0 refused, 20 already in" in out and "(50 rows)" in out
    resumed = rows_of(output)
    fresh = tmp_path / "fresh.parquet"
    scored(["heatflow", str(table), "-o", str(fresh)], capsys)
    assert resumed == rows_of(fresh)
    assert "0 scored, 0 refused, 50 already in" in scored(
        ["heatflow", str(table), "-o", str(output)], capsys
    )


def test_model_scores_with_a_candidate(reference_store: str, tmp_path: Path) -> None:
    """A candidate imported into a store of its own (the session's server keeps its models):
    `--model TAG` answers every row with it (without it, the served model answers: every other
    test here)."""
    home = private_home(reference_store, tmp_path)
    artifact = tmp_path / "constant_42.joblib"
    joblib.dump(DummyRegressor(strategy="constant", constant=42.0).fit([[0.0]], [42.0]), artifact)
    imported = run_save_models("import", "heatflow_svr", str(artifact), home=home)
    assert imported.returncode == 0, imported.stderr
    candidate = re.search(r"(heatflow_svr:\w+) is a candidate", " ".join(imported.stdout.split()))[
        1
    ]
    lines = tmp_path / "wells.txt"
    lines.write_text("250\n1500\n6000\n")
    env = {**os.environ, "BENTOML_HOME": home, LIFECYCLE_STATE_ENV: lifecycle_state(home)}

    output = tmp_path / "candidate.parquet"
    argv = ["heatflow", str(lines), "-o", str(output), "--no-progress", "--model", candidate]
    done = subprocess.run(
        [sys.executable, "-m", "despliegue.batch", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = rows_of(output)
    assert {(r["heat_flow_mw_m2"], r["model_tag"]) for r in rows.values()} == {(42.0, candidate)}
    assert sorted(rows) == ["1", "2", "3"]


def test_a_model_of_another_family_or_not_stored_is_refused_in_one_line(
    reference_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tmp_path / "wells.txt"
    lines.write_text("250\n1500\n")
    other = load_runner("falsetrue").models.model("falsetrue").served.tag
    assert main(["heatflow", str(lines), "-o", str(tmp_path / "x.parquet"), "--model", other]) == 1
    assert capsys.readouterr().err.strip() == f"error: {other} is not a model of family 'heatflow'"
    missing = "heatflow_svr:notstored"
    assert (
        main(["heatflow", str(lines), "-o", str(tmp_path / "x.parquet"), "--model", missing]) == 1
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: model {missing} is not in the BentoML model store"), line
    assert not (tmp_path / "x.parquet").exists()
