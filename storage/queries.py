"""Named queries over the store. Every value goes in as a parameter or a registered Arrow table.

Each function takes a Store (a fresh connection per call, run again if compaction removes a file
mid-read) or an open DuckDB connection from Store.connect() (used as is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import duckdb
import pyarrow as pa

from storage.records import PRIMARY_KEYS, SCHEMAS, BatchRow, CotRow, ExampleRow, ResultRow
from storage.store import Store

Source = Store | duckdb.DuckDBPyConnection


@dataclass(frozen=True)
class TrainingRow:
    example_id: str
    input: str
    label: str
    rationale: str | None


@dataclass(frozen=True)
class SelfEvalPair:
    example_id: str
    question: str
    cot_text: str  # the judged chain of thought's rationale
    verdict: str
    eval_rationale: str | None


@dataclass(frozen=True)
class StatusReport:
    rows: Mapping[str, int]  # per table, after deduplication
    examples_by_split: Mapping[str, int]
    cots_by_split: Mapping[str, int]
    cots_parsed: int
    cots_unparseable: int
    evaluations_parsed: int
    evaluations_unparseable: int
    calls_ok: int
    calls_failed: int
    failed_requests: int  # failed calls whose samples are still missing
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_p50_s: float | None
    failed_samples: int = 0  # samples whose latest request failed and that are still missing
    calls_usage_estimated: int = 0  # calls whose token counts are estimates (the server sent no usage)
    queue_p50_s: float | None = None
    server_p50_s: float | None = None

    def as_dict(self) -> dict[str, dict]:
        """Sections of plain values, for printing or JSON."""
        return {
            "rows": dict(self.rows),
            "examples by split": dict(self.examples_by_split),
            "cots by split": dict(self.cots_by_split),
            "parsing": {
                "cots parsed": self.cots_parsed,
                "cots unparseable": self.cots_unparseable,
                "evaluations parsed": self.evaluations_parsed,
                "evaluations unparseable": self.evaluations_unparseable,
            },
            "calls": {
                "ok": self.calls_ok,
                "failed": self.calls_failed,
                "failed requests still missing": self.failed_requests,
                "failed samples still missing": self.failed_samples,
                "prompt tokens": self.prompt_tokens,
                "completion tokens": self.completion_tokens,
                "calls with estimated tokens (no usage from the server)": self.calls_usage_estimated,
                "cost usd": round(self.cost_usd, 6),  # estimated in part when the line above is not 0
                "latency p50 s": _rounded(self.latency_p50_s),
                "queue time p50 s": _rounded(self.queue_p50_s),
                "server time p50 s": _rounded(self.server_p50_s),
            },
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- plumbing ------------------------------------------------------------------------------


def _run(source: Source, sql: str, params=None, tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
    def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
        for name, table in (tables or {}).items():
            con.register(name, table)
        try:
            return con.sql(sql, params=params).to_arrow_table()
        finally:
            for name in tables or {}:
                con.unregister(name)

    if isinstance(source, Store):
        return source.read(work)
    return work(source)


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def _strings(values: Iterable[str]) -> pa.Table:
    """A one-column table to join against: values stay data, never SQL text."""
    return pa.table({"value": pa.array(list(values), pa.string())})


def _records(kind, table: pa.Table) -> list:
    names = [f.name for f in dataclasses.fields(kind)]
    return [kind(**{name: row[name] for name in names}) for row in table.to_pylist()]


# ---- what is stored ------------------------------------------------------------------------


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


def latest_results(store: Source) -> list[ResultRow]:
    """The most recent value of each (arm, split, metric), by arm, split and metric."""
    sql = """
        SELECT * FROM results
        QUALIFY row_number() OVER (
            PARTITION BY arm, split, metric ORDER BY created_at DESC, checkpoint DESC
        ) = 1
        ORDER BY arm, split, metric
    """
    return _records(ResultRow, _run(store, sql))


def spent_usd(store: Source) -> float:
    """What all recorded teacher calls cost, in US dollars."""
    return float(
        _run(store, "SELECT coalesce(sum(cost_usd), 0.0) AS usd FROM calls").column("usd")[0].as_py()
    )


# Failure accounting is per sample: a sample counts as failed while it is missing and the latest
# request that asked for it failed; a later request that brought it, or asked again, clears it.
_STATUS_SQL = """
WITH asked AS (SELECT call_id, kind, status, created_at, unnest(keys) AS key FROM calls),
latest AS (
    SELECT * FROM asked QUALIFY row_number() OVER (PARTITION BY kind, key ORDER BY created_at DESC, call_id) = 1
),
stored AS (SELECT key, 'cot' AS kind FROM cots UNION ALL SELECT key, 'evaluation' AS kind FROM evaluations),
_missing_failed AS (
    SELECT latest.call_id, latest.key FROM latest
    ANTI JOIN stored ON stored.key = latest.key AND stored.kind = latest.kind
    WHERE latest.status = 'failed'
)
SELECT
    (SELECT count(*) FROM examples) AS examples,
    (SELECT count(*) FROM cots) AS cots,
    (SELECT count(*) FROM evaluations) AS evaluations,
    (SELECT count(*) FROM calls) AS calls,
    (SELECT count(*) FROM predictions) AS predictions,
    (SELECT count(*) FROM results) AS results,
    (SELECT count(*) FROM cots WHERE parse_error IS NULL) AS cots_parsed,
    (SELECT count(*) FROM evaluations WHERE parse_error IS NULL) AS evaluations_parsed,
    (SELECT count(*) FROM calls WHERE status = 'ok') AS calls_ok,
    (SELECT count(*) FROM calls WHERE status = 'failed') AS calls_failed,
    (SELECT count(DISTINCT call_id) FROM _missing_failed) AS failed_requests,
    (SELECT count(*) FROM _missing_failed) AS failed_samples,
    (SELECT count(*) FROM calls WHERE usage_estimated) AS calls_usage_estimated,
    (SELECT quantile_cont(queue_s, 0.5) FROM calls WHERE status = 'ok') AS queue_p50_s,
    (SELECT quantile_cont(server_s, 0.5) FROM calls WHERE status = 'ok') AS server_p50_s,
    (SELECT coalesce(sum(prompt_tokens), 0) FROM calls) AS prompt_tokens,
    (SELECT coalesce(sum(completion_tokens), 0) FROM calls) AS completion_tokens,
    (SELECT coalesce(sum(cost_usd), 0.0) FROM calls) AS cost_usd,
    (SELECT quantile_cont(latency_s, 0.5) FROM calls WHERE status = 'ok') AS latency_p50_s
"""

_BY_SPLIT_SQL = """
SELECT 'examples' AS what, split, count(*) AS n FROM examples GROUP BY split
UNION ALL
SELECT 'cots', coalesce(e.split, '(unknown example)'), count(*) FROM cots c
LEFT JOIN examples e ON e.example_id = c.example_id GROUP BY 2
"""


def status(store: Source) -> StatusReport:
    """Counts, spending and latency of everything stored."""
    totals = _rows(_run(store, _STATUS_SQL))[0]
    by_split: dict[str, dict[str, int]] = {"examples": {}, "cots": {}}
    for row in _rows(_run(store, _BY_SPLIT_SQL)):
        by_split[row["what"]][row["split"]] = row["n"]
    return StatusReport(
        rows={table: totals[table] for table in SCHEMAS if table in totals},  # batches: latest_batches
        examples_by_split=dict(sorted(by_split["examples"].items())),
        cots_by_split=dict(sorted(by_split["cots"].items())),
        cots_parsed=totals["cots_parsed"],
        cots_unparseable=totals["cots"] - totals["cots_parsed"],
        evaluations_parsed=totals["evaluations_parsed"],
        evaluations_unparseable=totals["evaluations"] - totals["evaluations_parsed"],
        calls_ok=totals["calls_ok"],
        calls_failed=totals["calls_failed"],
        failed_requests=totals["failed_requests"],
        prompt_tokens=int(totals["prompt_tokens"]),
        completion_tokens=int(totals["completion_tokens"]),
        cost_usd=float(totals["cost_usd"]),
        latency_p50_s=totals["latency_p50_s"],
        failed_samples=totals["failed_samples"],
        calls_usage_estimated=totals["calls_usage_estimated"],
        queue_p50_s=totals["queue_p50_s"],
        server_p50_s=totals["server_p50_s"],
    )


def teacher_answers(store: Source, split: str = "train") -> list[tuple[str, str]]:
    """(teacher's parsed answer, gold label) for every parsed chain of thought of the split."""
    table = _run(
        store,
        "SELECT c.answer, x.label FROM cots c JOIN examples x ON x.example_id = c.example_id "
        "WHERE x.split = ? AND c.answer IS NOT NULL ORDER BY c.example_id, c.cot_index, c.key",
        [split],
    )
    return list(zip(table.column("answer").to_pylist(), table.column("label").to_pylist()))


class QueryError(ValueError):
    """A user query that is not a read, or that DuckDB cannot run; the message says which."""


_READ_ONLY = "SELECT, WITH, FROM, DESCRIBE, SHOW or SUMMARIZE"


def _read_query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple]]:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(str(error).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryError(
            f"mindsmirror sql runs exactly one read-only query, got {len(statements)} statements: "
            "remove the extra ones (and any `;` between them)"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"mindsmirror sql is read-only, and this is a {kind.name} statement: "
                         f"start the query with {_READ_ONLY}")
    try:
        relation = con.sql(sql)
        return (list(relation.columns), relation.fetchall()) if relation is not None else ([], [])
    except duckdb.Error as error:
        raise QueryError(str(error).splitlines()[0]) from None


def run_sql(store: Source, sql: str) -> tuple[list[str], list[tuple]]:
    """One read query over the views (for `mindsmirror sql`): (column names, rows).

    Exactly one SELECT-type statement runs, on a connection that can reach no file outside the
    store and change no setting (Store.connect(sandbox=True)); an open connection is used as is."""
    if isinstance(store, Store):
        return store.read(lambda con: _read_query(con, sql), sandbox=True)
    return _read_query(store, sql)


# ---- integrity -----------------------------------------------------------------------------


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


# ---- training sets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """Stored teacher outputs a training set may use; None matches any value.

    A CoT matches on source, teacher model (any of `teacher_models`) and its prompt_version
    (cot_prompt_version); an evaluation also on its own prompt_version (eval_prompt_version)."""

    source: str | None  # teacher | dss | tot
    teacher_models: tuple[str, ...] | None = None
    cot_prompt_version: str | None = None
    eval_prompt_version: str | None = None


@dataclass(frozen=True)
class StoredSource:
    """One provenance of the stored CoTs of a split, and how many CoTs it has there."""

    source: str
    teacher_model: str
    prompt_version: str
    cots: int


def stored_sources(store: Source, split: str = "train") -> list[StoredSource]:
    """Which sources, teacher models and prompt versions the split's stored CoTs come from."""
    sql = """
        SELECT c.source, c.teacher_model, c.prompt_version, count(*) AS cots
        FROM cots c JOIN examples x ON x.example_id = c.example_id WHERE x.split = ?
        GROUP BY ALL ORDER BY c.source, c.teacher_model, c.prompt_version
    """
    return _records(StoredSource, _run(store, sql, [split]))


def _provenance_table(sources: Sequence[Provenance] | None) -> pa.Table:
    """The allowed provenances as a table to join against, numbered; None allows every stored row."""
    rows = [Provenance(None)] if sources is None else list(sources)
    if not rows:
        raise ValueError("a training set needs at least one provenance to select from")
    return pa.table({
        "entry": pa.array([None if sources is None else i for i in range(len(rows))], pa.int32()),
        "source": pa.array([r.source for r in rows], pa.string()),
        "teacher_models": pa.array([None if r.teacher_models is None else list(r.teacher_models) for r in rows],
                                   pa.list_(pa.string())),
        "cot_prompt_version": pa.array([r.cot_prompt_version for r in rows], pa.string()),
        "eval_prompt_version": pa.array([r.eval_prompt_version for r in rows], pa.string()),
    })


# Each allowed provenance gives one CoT per (example, cot_index): the newest, should it match CoTs
# of several teachers or prompt runs (other sampling parameters give other keys but the same
# indices), and a CoT matched by two provenances counts once. Without provenances (entry NULL)
# every stored (source, teacher model, prompt version) counts as one.
_CHOSEN_COTS = """
WITH matched AS (
    SELECT c.*, p.entry AS _entry, p.eval_prompt_version AS _eval_version
    FROM cots c JOIN _sources p
      ON (p.source IS NULL OR p.source = c.source)
     AND (p.teacher_models IS NULL OR list_contains(p.teacher_models, c.teacher_model))
     AND (p.cot_prompt_version IS NULL OR p.cot_prompt_version = c.prompt_version)
    WHERE c.cot_index < $n_cots
    QUALIFY row_number() OVER (
        PARTITION BY c.example_id, c.cot_index, p.entry,
                     CASE WHEN p.entry IS NULL THEN [c.source, c.teacher_model, c.prompt_version] END
        ORDER BY c.created_at DESC, c.key
    ) = 1
), chosen AS (
    SELECT * FROM matched QUALIFY row_number() OVER (PARTITION BY key ORDER BY _entry) = 1
)
"""

_SELF_EVAL_SQL = _CHOSEN_COTS + """
SELECT x.example_id, x.input AS question, c.rationale AS cot_text, v.verdict, v.rationale AS eval_rationale,
       c.parse_error IS NOT NULL OR v.parse_error IS NOT NULL AS excluded
FROM evaluations v
JOIN chosen c ON c.key = v.cot_key
JOIN examples x ON x.example_id = c.example_id
WHERE x.split = $split AND (c._eval_version IS NULL OR c._eval_version = v.prompt_version)
  AND v.teacher_model = c.teacher_model
QUALIFY row_number() OVER (PARTITION BY c.key, v.key) = 1
ORDER BY x.example_id, c.cot_index, c.key, v.eval_index, v.key
"""


def self_eval_rows(
    store: Source, split: str = "train", n_cots: int | None = None,
    sources: Sequence[Provenance] | None = None,
) -> tuple[list[SelfEvalPair], int]:
    """Every stored CoT (cot_index < n_cots if given) of the allowed `sources` paired with every
    evaluation of it from the same teacher; `sources=None` allows every stored row.

    Pairs where the CoT or the evaluation did not parse are left out; the second value counts them.
    """
    limit = n_cots if n_cots is not None else 2**31 - 1  # cot_index is an int32
    rows = _rows(_run(store, _SELF_EVAL_SQL, {"split": split, "n_cots": limit},
                      tables={"_sources": _provenance_table(sources)}))
    kept = [
        SelfEvalPair(r["example_id"], r["question"], r["cot_text"], r["verdict"], r["eval_rationale"])
        for r in rows
        if not r["excluded"]
    ]
    return kept, len(rows) - len(kept)


_COT_SQL = _CHOSEN_COTS + """
SELECT x.example_id, x.input, x.label AS gold, c.answer, c.rationale, c.parse_error IS NOT NULL AS excluded
FROM chosen c JOIN examples x ON x.example_id = c.example_id
WHERE x.split = $split
ORDER BY x.example_id, c.cot_index, c.source, c.teacher_model, c.prompt_version, c.key
"""


def cot_rows(
    store: Source, split: str = "train", n_cots: int = 1, labels: Literal["gold", "teacher"] = "gold",
    sources: Sequence[Provenance] | None = None,
) -> tuple[list[TrainingRow], int]:
    """One row per stored CoT with cot_index < n_cots from each allowed provenance (so one source
    gives at most n_cots rows per example): input = question, rationale = the CoT's rationale,
    label = the gold label or the teacher's parsed answer. `sources=None` allows every stored row.
    Unparseable CoTs are left out; the second value counts them."""
    if labels not in ("gold", "teacher"):
        raise ValueError(f"labels must be 'gold' or 'teacher', not {labels!r}")
    if n_cots < 1:
        raise ValueError(f"n_cots must be >= 1, not {n_cots}")
    rows = _rows(_run(store, _COT_SQL, {"split": split, "n_cots": n_cots},
                      tables={"_sources": _provenance_table(sources)}))
    kept = [
        TrainingRow(
            r["example_id"], r["input"], r["gold"] if labels == "gold" else r["answer"], r["rationale"]
        )
        for r in rows
        if not r["excluded"]
    ]
    return kept, len(rows) - len(kept)


def label_rows(store: Source, split: str) -> list[TrainingRow]:
    """Question and gold label of every example in the split (no rationale): standard
    fine-tuning, validation and test."""
    return [
        TrainingRow(example.example_id, example.input, example.label, None)
        for example in examples(store, [split])
    ]


# ---- Batch API batches -----------------------------------------------------------------------

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
