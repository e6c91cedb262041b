"""Batch API bookkeeping: the latest state of each batch, open keys and committed spend."""

from __future__ import annotations

from collections.abc import Iterable

from storage.queries.common import Source, _records, _run, _strings
from storage.records import BatchRow

_LATEST_BATCH_ROWS = """
    SELECT * FROM batches
    QUALIFY row_number() OVER (PARTITION BY tag ORDER BY created_at DESC, event_id DESC) = 1
"""


def latest_batches(store: Source, open_only: bool = False) -> list[BatchRow]:
    """The latest row of every batch tag, oldest batch first; open_only: those not yet collected."""
    sql = f"SELECT * FROM ({_LATEST_BATCH_ROWS}) b"
    if open_only:
        sql += " WHERE b.event <> 'collected'"
    return _records(BatchRow, _run(store, sql + " ORDER BY b.tag"))


def planned_batches(store: Source, tags: Iterable[str]) -> dict[str, BatchRow]:
    """The "planned" row (keys and request manifests) of each of these tags."""
    sql = "SELECT b.* FROM batches b SEMI JOIN _tags t ON t.value = b.tag WHERE b.event = 'planned'"
    rows = _records(BatchRow, _run(store, sql, tables={"_tags": _strings(tags)}))
    return {row.tag: row for row in rows}


def open_batch_keys(store: Source) -> set[str]:
    """Sample keys in batches planned or submitted but not yet collected (not to be planned again)."""
    sql = f"""
        SELECT DISTINCT unnest(p.keys) AS key FROM batches p
        SEMI JOIN ({_LATEST_BATCH_ROWS}) b ON b.tag = p.tag AND b.event <> 'collected'
        WHERE p.event = 'planned'
    """
    return set(_run(store, sql).column("key").to_pylist())


def committed_usd(store: Source) -> float:
    """What the open batches could still cost at most (their estimates at batch prices)."""
    sql = f"""
        SELECT coalesce(sum(p.estimated_cost_usd), 0.0) AS usd FROM batches p
        SEMI JOIN ({_LATEST_BATCH_ROWS}) b ON b.tag = p.tag AND b.event <> 'collected'
        WHERE p.event = 'planned'
    """
    return float(_run(store, sql).column("usd")[0].as_py())


def closed_attempts(store: Source, keyset: str) -> int:
    """How many collected batches asked for exactly this keyset (expired or failed ones retried whole)."""
    sql = "SELECT count(DISTINCT tag) AS n FROM batches WHERE keyset = ? AND event = 'collected'"
    return int(_run(store, sql, [keyset]).column("n")[0].as_py())
