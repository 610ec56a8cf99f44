"""What a batch reads: a folder of images (recursively), a CSV or Parquet column, or a text
file with one item a line. Items are streamed as (name, raw value): a folder is listed (names
only), never read ahead; a table is read in chunks of its column alone.

An item's name is what the output's `item` column holds and what a resumed run skips: the
path relative to the folder, the table's row number (from 0), or the text file's line number
(from 1; blank lines are no items).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
CHUNK_ROWS = 4096


class BadInput(ValueError):
    """The run cannot start: its message is the one line the command prints."""


@dataclass(frozen=True)
class Source:
    """The items of one run, and how many there are (for the progress bar)."""

    path: Path
    kind: str  # "folder", "table" or "lines"
    column: str | None
    total: int

    def items(self) -> Iterator[tuple[str, Any]]:
        if self.kind == "folder":
            for file in image_files(self.path):
                yield file.relative_to(self.path).as_posix(), file
        elif self.kind == "lines":
            with self.path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield str(number), line.rstrip("\r\n")
        else:
            yield from table_items(self.path, self.column or "")


def image_files(folder: Path) -> list[Path]:
    """Every file under the folder, in name order, hidden ones left out. A file that is not an
    image stays in: its row says why it was not scored."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def table_items(path: Path, column: str) -> Iterator[tuple[str, Any]]:
    row = 0
    if path.suffix.lower() == ".csv":
        chunks = (
            chunk[column].tolist()
            for chunk in pd.read_csv(path, usecols=[column], chunksize=CHUNK_ROWS, dtype=object)
        )
    else:
        chunks = (
            batch.column(0).to_pylist()
            for batch in pq.ParquetFile(path).iter_batches(CHUNK_ROWS, columns=[column])
        )
    for values in chunks:
        for value in values:
            yield str(row), value
            row += 1


def table_shape(path: Path) -> tuple[list[str], int]:
    """The table's column names and row count, read without loading its values."""
    if path.suffix.lower() == ".csv":
        try:
            names = list(pd.read_csv(path, nrows=0).columns)
        except pd.errors.EmptyDataError:
            return [], 0
        with path.open("rb") as rows:
            count = max(0, sum(1 for line in rows if line.strip()) - 1)
        return names, count
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise BadInput(f"{path}: not a Parquet file ({exc})") from None
    return list(parquet.schema_arrow.names), parquet.metadata.num_rows


def open_source(path: Path, reads: str, column: str | None, default_column: str) -> Source:
    """The run's items, or BadInput naming the problem: a missing path, an empty folder or
    table, a column the table does not have, a folder given to a family that reads values."""
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    if path.is_dir():
        if reads != "images":
            raise BadInput(
                f"{path} is a folder; this family reads {reads} (a table or a text file)"
            )
        total = len(image_files(path))
        if not total:
            raise BadInput(f"{path}: no files in this folder")
        return Source(path, "folder", None, total)
    if reads == "images":
        raise BadInput(f"{path} is a file; this family reads images: give a folder")
    if path.suffix.lower() in TABLE_SUFFIXES:
        names, rows = table_shape(path)
        wanted = column or default_column
        if wanted not in names:
            raise BadInput(
                f"{path}: no column {wanted!r}; columns: {', '.join(map(str, names)) or 'none'}"
                + ("" if column else " (name one with --column)")
            )
        if not rows:
            raise BadInput(f"{path}: the table has no rows")
        return Source(path, "table", wanted, rows)
    with path.open(encoding="utf-8", errors="replace") as lines:
        total = sum(1 for line in lines if line.strip())
    if not total:
        raise BadInput(f"{path}: no items (the file is empty)")
    return Source(path, "lines", None, total)
