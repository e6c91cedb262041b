"""A journal for answers the store could not take (a full disk): kept durable, stored by the next run.

When a store write fails, generation stops dispatching and appends every answer it still receives
(rows, then their call record) here as JSON lines, each flushed and fsynced, instead of dropping them.
`replay(store)` writes them into the store before the next run plans, so nothing paid is bought again.

The journal lives beside a local store (``<store>/_journal/``); when that filesystem is the full one,
and always for a store in object storage, it lives in a folder of this machine:
$MINDSMIRROR_JOURNAL_DIR, else ~/.local/state/mindsmirror/journal, in a subfolder named for the store.
It stays on the machine that received the answers: the next run there replays it. Replaying rows the store already holds is harmless: views keep
one row per key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from datetime import datetime
from pathlib import Path

from storage.location import machine_folder
from storage.records import TABLE_OF
from storage.store import Store

RECORDS = {table: record for record, table in TABLE_OF.items()}


def fallback_folder(store: Store) -> Path:
    """Where the journal goes when the store's own filesystem cannot take it, or is a bucket."""
    if base := os.environ.get("MINDSMIRROR_JOURNAL_DIR"):
        return Path(base) / hashlib.sha256(store.root.encode()).hexdigest()[:16]
    return machine_folder(store.root, "journal")


def folders(store: Store) -> list[Path]:
    beside = store.local_folder()
    return ([beside / "_journal"] if beside is not None else []) + [fallback_folder(store)]


def _encode(row) -> dict:
    values = {}
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        values[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return values


def _line(rows: list) -> str:
    return json.dumps({"table": TABLE_OF[type(rows[0])], "rows": [_encode(row) for row in rows]},
                      ensure_ascii=False) + "\n"


def _decode(record: type, values: dict):
    decoded = {}
    for f in dataclasses.fields(record):
        if f.name not in values:
            continue  # a field added since: its default
        value = values[f.name]
        if value is not None and "datetime" in str(f.type):
            value = datetime.fromisoformat(value)
        elif isinstance(value, list):
            value = tuple(value)
        decoded[f.name] = value
    return record(**decoded)


class Journal:
    """This process's journal file; created on the first `record`."""

    def __init__(self, store: Store):
        self.store = store
        self.name = f"{uuid.uuid4().hex}.jsonl"
        self.path: Path | None = None
        self.rows = 0  # rows recorded here and not yet in the store

    def record(self, rows: list) -> Path:
        """Append rows of one record type, durably; raises OSError when no journal folder takes them."""
        line = _line(rows)
        errors = []
        for folder in ([self.path.parent] if self.path else []) + folders(self.store):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / self.name, "a", encoding="utf-8") as file:
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
            except OSError as error:
                errors.append(error)
                continue
            self.path = folder / self.name
            self.rows += len(rows)
            return self.path
        raise errors[-1]

    def keep_only(self, groups: list[list]) -> None:
        """Rewrite this journal to hold just `groups`, once the rest reached the store, so it lists
        exactly what is pending. If that fails it keeps what it held, a superset that replay
        stores harmlessly (views keep one row per key)."""
        if self.path is None:
            return
        temporary = self.path.with_suffix(".jsonl.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.writelines(_line(rows) for rows in groups)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            self.rows = sum(len(rows) for rows in groups)
        except OSError:
            temporary.unlink(missing_ok=True)

    def discard(self) -> None:
        """Forget the journal once everything in it has reached the store."""
        for folder in folders(self.store):
            (folder / self.name).unlink(missing_ok=True)
        self.path, self.rows = None, 0


def pending_files(store: Store) -> list[Path]:
    return sorted(path for folder in folders(store) if folder.is_dir() for path in folder.glob("*.jsonl"))


def replay(store: Store) -> int:
    """Write every journalled row into the store, oldest file first, and delete each file replayed;
    returns how many rows were written. A torn last line (a crash mid-append) is skipped."""
    replayed = 0
    for path in pending_files(store):
        groups = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            record = RECORDS[entry["table"]]
            groups.append([_decode(record, values) for values in entry["rows"]])
        for rows in groups:
            store.append(rows)
            replayed += len(rows)
        path.unlink()
    return replayed
