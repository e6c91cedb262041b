"""Reading record files (JSONL, JSON arrays, CSV, Parquet) in file order, with errors that name the
file and row."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file and row."""


def read_records(path: Path, limit: int | None) -> tuple[list[dict], int]:
    """The first `limit` records in file order (row i is records[i]) and the file's row count."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _numbered(path, _parquet_records(path), limit)
    if suffix not in (".json", ".jsonl", ".csv"):
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    raw = path.read_bytes()
    if not raw.strip():
        raise DatasetError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not valid UTF-8 (byte {raw[error.start]:#04x})") from None
    records = _csv_records(path, text) if suffix == ".csv" else _json_records(path, text)
    return _numbered(path, records, limit)


def _numbered(path: Path, records: list, limit: int | None) -> tuple[list[dict], int]:
    if not records:
        raise DatasetError(f"{path}: file has no rows")
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(
                f"{path} row {row}: expected an object with named fields, got {type(record).__name__}"
            )
    return records[: limit or None], len(records)


def _json_records(path: Path, text: str) -> list:
    if text.lstrip().startswith("["):  # a JSON array
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: line {error.lineno}: not valid JSON: {error.msg}") from None
        return records
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DatasetError(
                f"{path} row {len(records)} (line {line_number}): not valid JSON: {error.msg}"
            ) from None
    return records


def _csv_records(path: Path, text: str) -> list[dict]:
    try:
        return [dict(record) for record in csv.DictReader(io.StringIO(text, newline=""))]
    except csv.Error as error:
        raise DatasetError(f"{path}: not valid CSV: {error}") from None


def _parquet_records(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: not a readable Parquet file: {error}") from None
