"""Where a batch's rows go: Parquet or CSV, written so an interrupted run can be resumed.

Rows are written as they are scored, one Parquet part per batch in `OUTPUT.parts/` beside the
output, so a run that stops (a crash, Ctrl-C, a full disk) keeps what it scored. At the end the
earlier output (if any) and the parts become the output file, and the parts are removed. A
rerun with the same output skips every item already in either.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from despliegue.batch.inputs import BadInput

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def output_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise BadInput(f"{path}: the output must end in .parquet or .csv") from None


class ResumableOutput:
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.format = output_format(path)
        self.columns = list(columns)
        self.parts = path.with_name(path.name + ".parts")
        self.written = 0

    def _earlier(self) -> pd.DataFrame | None:
        if not self.path.exists():
            return None
        if self.format == "csv":
            return pd.read_csv(
                self.path, dtype={"item": str}, keep_default_na=False, na_values=[""]
            )
        return pd.read_parquet(self.path)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.parquet")) if self.parts.is_dir() else []

    def done(self) -> set[str]:
        """The names of the items already scored, by an earlier run or this one."""
        names: set[str] = set()
        if self.path.exists():
            if self.format == "csv":
                names |= set(pd.read_csv(self.path, usecols=["item"], dtype=str)["item"])
            else:
                names |= set(pq.read_table(self.path, columns=["item"]).column(0).to_pylist())
        for part in self._part_files():
            names |= set(pq.read_table(part, columns=["item"]).column(0).to_pylist())
        return names

    def write(self, rows: list[dict]) -> None:
        """One scored batch, durable before the next one starts."""
        self.parts.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows, columns=self.columns).astype({"item": str, "error": object})
        target = self.parts / f"{len(self._part_files()):06d}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), target)
        self.written += len(rows)

    def finish(self) -> int:
        """The output file: earlier rows, then this run's; returns its row count."""
        frames = [frame for frame in [self._earlier()] if frame is not None]
        frames += [pd.read_parquet(part) for part in self._part_files()]
        frames = [frame.dropna(axis=1, how="all") for frame in frames if len(frame)]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        table = table.reindex(columns=self.columns)
        partial = self.path.with_name(self.path.name + ".partial")
        if self.format == "csv":
            table.to_csv(partial, index=False)
        else:
            table.to_parquet(partial, index=False)
        partial.replace(self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(table)
