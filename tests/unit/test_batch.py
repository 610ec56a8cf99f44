"""Batch scoring's command line before any model loads: bad input is one line, exit 1, and
nothing written; inputs are read as the README says (items named, streamed, columns found)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from despliegue.batch.__main__ import main
from despliegue.batch.families import ANTIBIOTICS, FLOWERS, HEATFLOW, columns_of, spark_schema
from despliegue.batch.inputs import BadInput, open_source
from despliegue.batch.output import ResumableOutput
from despliegue.batch.scoring import scorer_of
from despliegue.registry import FAMILIES
from tests.conftest import ROOT


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The command's one stderr line for argv, after checking it exits 1."""
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def thicknesses(tmp_path: Path) -> Path:
    table = tmp_path / "thicknesses.csv"
    pd.DataFrame({"sediment_thickness_m": [250, 1500]}).to_csv(table, index=False)
    return table


@pytest.mark.parametrize(
    ("family", "make", "named"),
    [
        ("soil", lambda tmp: tmp / "t.csv", "no family 'soil'; families: heatflow"),
        ("flowers", lambda tmp: tmp / "missing", "missing: no such file or folder"),
        ("flowers", lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no files in this"),
        ("heatflow", lambda tmp: _csv(tmp, "sediment_thickness_m\n"), "the table has no rows"),
        ("heatflow", lambda tmp: _csv(tmp, "depth\n100\n"), "no column 'sediment_thickness_m'"),
        ("heatflow", lambda tmp: _csv(tmp, ""), "no column 'sediment_thickness_m'; columns: none"),
        ("falsetrue", lambda tmp: _text(tmp, "\n\n"), "no items (the file is empty)"),
        ("heatflow", lambda tmp: (tmp / "images").mkdir() or tmp / "images", "is a folder"),
    ],
)
def test_bad_input_is_one_line_naming_it_exit_1_and_nothing_written(
    family: str, make, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make(tmp_path)
    output = tmp_path / "out" / "scores.parquet"
    line = refused([family, str(source), "-o", str(output)], capsys)
    assert named in line and line.startswith("error: "), line
    assert not output.parent.exists()


def test_a_column_named_but_absent_is_named_with_the_columns_there(
    thicknesses: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(
        ["heatflow", str(thicknesses), "-o", str(tmp_path / "o.csv"), "--column", "depth"], capsys
    )
    assert "no column 'depth'; columns: sediment_thickness_m" in line


def test_an_output_that_is_neither_parquet_nor_csv_is_refused(
    thicknesses: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(["heatflow", str(thicknesses), "-o", str(tmp_path / "o.json")], capsys)
    assert "must end in .parquet or .csv" in line
    assert not (tmp_path / "o.json").exists()


@pytest.mark.processes
def test_the_command_exits_1_from_a_shell(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "despliegue.batch", "soil", str(tmp_path), "-o", "x.parquet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no family 'soil'; families: " + ", ".join(f.name for f in FAMILIES)
    ]


def test_every_family_has_its_scorer_named_in_the_registry() -> None:
    for family in FAMILIES:
        assert scorer_of(family.name).family == family.name


def test_a_folder_is_every_file_under_it_by_relative_name_hidden_ones_left_out(
    tmp_path: Path,
) -> None:
    for name in ("b.jpg", "a/c.png", "a/notes.txt", ".hidden/d.jpg", "a/.e.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = open_source(tmp_path, "images", None, FLOWERS.column)
    assert source.total == 3
    assert [name for name, _ in source.items()] == ["a/c.png", "a/notes.txt", "b.jpg"]


def test_table_rows_and_text_lines_are_named_by_position(tmp_path: Path) -> None:
    table = tmp_path / "vectors.parquet"
    pd.DataFrame({"features": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]}).to_parquet(table)
    source = open_source(table, "vectors", None, ANTIBIOTICS.column)
    assert [(name, list(v)) for name, v in source.items()] == [
        ("0", [1.0, 0.0]),
        ("1", [0.0, 1.0]),
        ("2", [1.0, 1.0]),
    ]
    lines = _text(tmp_path, "250\n\n1500\n")
    assert list(open_source(lines, "numbers", None, HEATFLOW.column).items()) == [
        ("1", "250"),
        ("3", "1500"),
    ]
    with pytest.raises(BadInput, match="this family reads images"):
        open_source(lines, "images", None, FLOWERS.column)


def test_an_output_resumes_from_its_parts_and_its_earlier_rows(tmp_path: Path) -> None:
    """What a stopped run wrote (its parts) and what an earlier run finished both count as
    done; finishing keeps every row once, earlier rows first, and removes the parts."""
    path = tmp_path / "scores.csv"
    columns = columns_of(HEATFLOW)
    first = ResumableOutput(path, columns)
    first.write([{"item": "0", "heat_flow_mw_m2": 93.8}, {"item": "1", "error": "refused"}])
    first.finish()
    stopped = ResumableOutput(path, columns)
    stopped.write([{"item": "2", "heat_flow_mw_m2": 47.5}])
    assert ResumableOutput(path, columns).done() == {"0", "1", "2"}
    assert ResumableOutput(path, columns).finish() == 3
    table = pd.read_csv(path, dtype={"item": str})
    assert list(table.columns) == list(columns)
    assert table["item"].tolist() == ["0", "1", "2"]
    assert table["error"].isna().tolist() == [True, False, True]
    assert not (tmp_path / "scores.csv.parts").exists()


def test_spark_schema_lists_every_output_column_with_its_type() -> None:
    assert spark_schema(HEATFLOW) == (
        "item string, sediment_thickness_m double, heat_flow_mw_m2 double, unit string, "
        "model_tag string, error string"
    )


def _csv(tmp: Path, text: str) -> Path:
    path = tmp / "table.csv"
    path.write_text(text)
    return path


def _text(tmp: Path, text: str) -> Path:
    path = tmp / "items.txt"
    path.write_text(text)
    return path


def test_bench_goals_compare_with_the_ceiling_and_the_best_http_point() -> None:
    from benchmarks.batch import goals, markdown

    batch = {"items": 2000, "items_per_s": 900.0, "rss_growth_mib": 3.0}
    limit = {"ceiling_items_per_s": 1000.0}
    http = [{"throughput_rps": 50.0}, {"throughput_rps": 100.0}]
    scored = goals(batch, limit, http, items=2)
    assert scored["vs_ceiling"] == pytest.approx(0.9) and scored["meets_ceiling_goal"]
    assert scored["vs_http"] == pytest.approx(4.5) and not scored["meets_http_goal"]
    table = markdown({"paths": {"flowers": {"batch": scored}, "heatflow": {}}})
    assert "| flowers | 2000 | 900 | 0.90 | 4.50 | 3 |" in table and "heatflow" not in table
