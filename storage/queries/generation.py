"""The queries generation plans with: stored examples, which sample keys are missing, what failed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from storage.queries.common import Source, _records, _run, _strings
from storage.records import PRIMARY_KEYS, SCHEMAS, CotRow, ExampleRow


def new_examples(store: Source, rows: list[ExampleRow]) -> list[ExampleRow]:
    """The rows whose example_id is not stored yet, in their given order."""
    if not rows:
        return []
    stored = _run(
        store,
        "SELECT w.value FROM _wanted w SEMI JOIN examples e ON e.example_id = w.value",
        tables={"_wanted": _strings(row.example_id for row in rows)},
    )
    known = set(stored.column("value").to_pylist())
    return [row for row in rows if row.example_id not in known]


def missing_keys(store: Source, table: str, keys: list[str]) -> set[str]:
    """The keys not stored in `table` (whose primary key is one column: cots, evaluations, ...)."""
    if table not in SCHEMAS or len(PRIMARY_KEYS[table]) != 1:
        single = sorted(t for t, pk in PRIMARY_KEYS.items() if len(pk) == 1)
        raise ValueError(f"missing_keys works on tables with a one-column key: {single}, not {table!r}")
    if not keys:
        return set()
    column = PRIMARY_KEYS[table][0]
    missing = _run(
        store,
        f'SELECT DISTINCT w.value FROM _wanted w ANTI JOIN {table} t ON t."{column}" = w.value',
        tables={"_wanted": _strings(keys)},
    )
    return set(missing.column("value").to_pylist())


def examples(store: Source, splits: Iterable[str]) -> list[ExampleRow]:
    """Stored examples of the given splits, ordered by split then example_id."""
    table = _run(
        store,
        "SELECT * FROM examples WHERE list_contains(?, split) ORDER BY split, example_id",
        [list(splits)],
    )
    return _records(ExampleRow, table)


def cots_for_examples(
    store: Source, example_ids: Iterable[str], keys: Iterable[str] | None = None
) -> list[CotRow]:
    """Stored CoTs of these examples (only those with one of `keys`, if given), by example and index."""
    tables = {"_ids": _strings(example_ids)}
    sql = "SELECT c.* FROM cots c SEMI JOIN _ids i ON i.value = c.example_id"
    if keys is not None:
        tables["_keys"] = _strings(keys)
        sql += " SEMI JOIN _keys k ON k.value = c.key"
    return _records(CotRow, _run(store, sql + " ORDER BY c.example_id, c.cot_index, c.key", tables=tables))


def cots_by_keys(store: Source, keys: Iterable[str]) -> list[CotRow]:
    """The stored CoTs with these keys, by example and index."""
    sql = (
        "SELECT c.* FROM cots c SEMI JOIN _keys k ON k.value = c.key "
        "ORDER BY c.example_id, c.cot_index, c.key"
    )
    return _records(CotRow, _run(store, sql, tables={"_keys": _strings(keys)}))


def failed_keys(store: Source) -> set[str]:
    """Sample keys asked for by failed requests and still not stored (what `resume` retries)."""
    sql = """
        SELECT DISTINCT f.key FROM (SELECT kind, unnest(keys) AS key FROM failed_requests) f
        ANTI JOIN (SELECT key, 'cot' AS kind FROM cots UNION ALL SELECT key, 'evaluation' FROM evaluations) s
        ON s.key = f.key AND s.kind = f.kind
    """
    return set(_run(store, sql).column("key").to_pylist())


def spent_usd(store: Source) -> float:
    """What all recorded teacher calls cost, in US dollars."""
    return float(
        _run(store, "SELECT coalesce(sum(cost_usd), 0.0) AS usd FROM calls").column("usd")[0].as_py()
    )


@dataclass(frozen=True)
class MissingRequest:
    """A request the teacher answered whose samples the store no longer holds."""

    kind: str  # cot | evaluation
    example_id: str
    missing: int  # of its sample keys
    asked: int


_ANSWERED_BUT_MISSING_SQL = """
WITH answered AS (
    SELECT DISTINCT kind, example_id, keys FROM calls WHERE status = 'ok'
),
asked AS (SELECT kind, example_id, keys, unnest(keys) AS key FROM answered),
stored AS (
    SELECT key, 'cot' AS kind FROM cots
    UNION ALL
    SELECT key, 'evaluation' AS kind FROM evaluations
)
SELECT asked.kind, asked.example_id, count(*) AS missing, any_value(len(asked.keys)) AS asked
FROM asked ANTI JOIN stored ON stored.key = asked.key AND stored.kind = asked.kind
GROUP BY asked.kind, asked.example_id, asked.keys
ORDER BY asked.example_id, asked.kind
"""


def answered_but_missing(store: Source) -> list[MissingRequest]:
    """Requests recorded as answered whose samples are not all stored (their part was lost or
    quarantined): what a rerun of generate will ask for again."""
    return _records(MissingRequest, _run(store, _ANSWERED_BUT_MISSING_SQL))


def stored_sample_keys(store: Source, keys: Iterable[str]) -> set[str]:
    """Which of these keys a chain of thought or a self-evaluation is stored under."""
    sql = """
        SELECT w.value FROM _wanted w
        SEMI JOIN (SELECT key FROM cots UNION ALL SELECT key FROM evaluations) s ON s.key = w.value
    """
    return set(_run(store, sql, tables={"_wanted": _strings(keys)}).column("value").to_pylist())
