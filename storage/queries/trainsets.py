"""Training sets: stored examples, chains of thought and self-evaluations chosen by provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import arrow
from storage.queries.common import Source, _on_connection, _records, _run
from storage.queries.generation import examples


@dataclass(frozen=True)
class TrainingRow:
    example_id: str
    input: str
    label: str
    rationale: str | None


TRAINING_COLUMNS = ("example_id", "input", "label", "rationale")


class TrainingRows(Sequence):
    """Training rows kept as Arrow columns (TRAINING_COLUMNS; a column may be dictionary-encoded):
    a TrainingRow is made only for a row that is read, so a million rows cost their columns, not a
    million objects. Compares equal to a list of the same TrainingRows."""

    def __init__(self, table: pa.Table):
        self.table = table.select(list(TRAINING_COLUMNS))

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TrainingRows(self.table.take(pa.array(range(*index.indices(len(self))), pa.int64())))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("training row index out of range")
        return TrainingRow(**self.table.slice(index, 1).to_pylist()[0])

    def __iter__(self) -> Iterator[TrainingRow]:
        for batch in self.table.to_batches(max_chunksize=65_536):
            yield from map(TrainingRow, *(batch.column(name).to_pylist() for name in TRAINING_COLUMNS))

    def __eq__(self, other) -> bool:
        if isinstance(other, (TrainingRows, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        return f"TrainingRows({len(self)} rows)"


@dataclass(frozen=True)
class SelfEvalPair:
    example_id: str
    question: str
    cot_text: str  # the judged chain of thought's rationale
    verdict: str
    eval_rationale: str | None
    cot_key: str = field(default="", compare=False)  # which stored samples the pair is
    eval_key: str = field(default="", compare=False)


def teacher_answers(store: Source, split: str = "train") -> list[tuple[str, str]]:
    """(teacher's parsed answer, gold label) for every parsed chain of thought of the split."""
    table = _run(
        store,
        "SELECT c.answer, x.label FROM cots c JOIN examples x ON x.example_id = c.example_id "
        "WHERE x.split = ? AND c.answer IS NOT NULL ORDER BY c.example_id, c.cot_index, c.key",
        [split],
    )
    return list(zip(table.column("answer").to_pylist(), table.column("label").to_pylist()))


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
    entry = pa.nulls(1, pa.int32()) if sources is None else arrow.numbers(np.arange(len(rows), dtype=np.int32))
    return pa.table({
        "entry": entry,
        "source": arrow.optional_strings([r.source for r in rows]),
        "teacher_models": arrow.optional_string_lists([r.teacher_models for r in rows]),
        "cot_prompt_version": arrow.optional_strings([r.cot_prompt_version for r in rows]),
        "eval_prompt_version": arrow.optional_strings([r.eval_prompt_version for r in rows]),
    })


# Each allowed provenance gives one CoT per (example, cot_index): the newest, should it match CoTs
# of several teachers or prompt runs (other sampling parameters give other keys but the same
# indices), and a CoT matched by two provenances counts once. Without provenances (entry NULL)
# every stored (source, teacher model, prompt version) counts as one.
_CHOSEN_COTS = """
WITH matched AS (
    SELECT c.*, p.entry AS _entry, p.eval_prompt_version AS _eval_version
    FROM cots c
    SEMI JOIN examples x ON x.example_id = c.example_id AND x.split = $split  -- one split's CoTs only
    JOIN _sources p
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
    SELECT * FROM matched {once}
)
"""
# A CoT matched by two provenances counts once; with one provenance no CoT can be matched twice.
_ONCE = "QUALIFY row_number() OVER (PARTITION BY key ORDER BY _entry) = 1"


# The chosen CoTs of a split with their questions (numbered `cot` in this order by _judged), for a
# CoT set and a self-evaluation set alike; the evaluations of those CoTs are then read against this
# table on the same connection, so the CoTs' texts are read once and not repeated on every evaluation.
_JUDGED_SQL = _CHOSEN_COTS + """
SELECT x.example_id, x.input AS question, x.label AS gold, c.answer, c.rationale, c.key AS cot_key,
       c.teacher_model, c.created_at, c._eval_version AS eval_version, c.parse_error IS NOT NULL AS excluded
FROM chosen c JOIN examples x ON x.example_id = c.example_id
WHERE x.split = $split
ORDER BY x.example_id, c.cot_index, c.source, c.teacher_model, c.prompt_version, c.key
"""

# An evaluation of a judged CoT `j` from the same teacher, within the allowed eval prompt version.
_EVALUATIONS_OF_JUDGED = """
FROM evaluations v JOIN _judged j ON j.cot_key = v.cot_key
WHERE (j.eval_version IS NULL OR j.eval_version = v.prompt_version) AND v.teacher_model = j.teacher_model
  -- an evaluation older than the CoT row judged a text since lost and bought again (repair)
  AND v.created_at >= j.created_at
  AND v.eval_index < $n_evals
"""

_PAIRS_SQL = """
SELECT j.cot, v.verdict, v.rationale AS eval_rationale, v.key AS eval_key,
       j.excluded OR v.parse_error IS NOT NULL AS excluded
""" + _EVALUATIONS_OF_JUDGED + """
ORDER BY j.cot, v.eval_index, v.key
"""

_VERDICTS_SQL = """
SELECT j.cot, count(*) AS verdicts, count(*) FILTER (WHERE v.verdict = 'correct') AS said_correct
""" + _EVALUATIONS_OF_JUDGED + """
  AND v.verdict IS NOT NULL
GROUP BY j.cot
"""


_ALL = 2**31 - 1  # cot_index and eval_index are int32: "no limit"


def _limit(n: int | None) -> int:
    return _ALL if n is None else n


def chosen_cots(store: Source, split: str = "train", n_cots: int | None = None,
                sources: Sequence[Provenance] | None = None) -> pa.Table:
    """The CoTs a CoT set and a self-evaluation set of these arguments both judge, read once for
    both (`chosen=` of judged_cot_table and self_eval_tables)."""
    return _on_connection(store, lambda con: _chosen(con, split, _limit(n_cots), sources))


def _chosen(con: duckdb.DuckDBPyConnection, split: str, n_cots: int, sources: Sequence[Provenance] | None) -> pa.Table:
    provenances = _provenance_table(sources)
    con.register("_sources", provenances)
    try:
        sql = _JUDGED_SQL.replace("{once}", _ONCE if provenances.num_rows > 1 else "")
        return con.sql(sql, params={"split": split, "n_cots": n_cots}).to_arrow_table()
    finally:
        con.unregister("_sources")


def _judged(con: duckdb.DuckDBPyConnection, split: str, n_cots: int, sources: Sequence[Provenance] | None,
            chosen: pa.Table | None) -> pa.Table:
    """The chosen CoTs (read now unless given), numbered and registered as _judged on `con` for the
    evaluation queries."""
    judged = _chosen(con, split, n_cots, sources) if chosen is None else chosen
    judged = judged.add_column(0, "cot", arrow.numbers(np.arange(judged.num_rows, dtype=np.int32)))
    con.register("_judged", judged)
    return judged


@dataclass(frozen=True)
class SelfEvalTables:
    """A self-evaluation set as two tables: the judged CoTs (columns cot, example_id, question,
    cot_text, cot_key) and their evaluations in order (cot: the row of `cots` judged, verdict,
    eval_rationale, eval_key, excluded: the CoT or the evaluation did not parse)."""

    cots: pa.Table
    pairs: pa.Table


def self_eval_tables(
    store: Source, split: str = "train", n_cots: int | None = None,
    sources: Sequence[Provenance] | None = None, n_evals: int | None = None, chosen: pa.Table | None = None,
) -> SelfEvalTables:
    """What self_eval_rows returns, as Arrow columns: each judged CoT's texts once. `chosen`:
    chosen_cots of the same split, n_cots and sources, if already read."""

    def work(con: duckdb.DuckDBPyConnection) -> SelfEvalTables:
        judged = _judged(con, split, _limit(n_cots), sources, chosen)
        try:
            pairs = con.sql(_PAIRS_SQL, params={"n_evals": _limit(n_evals)}).to_arrow_table()
        finally:
            con.unregister("_judged")
        cots = judged.select(["cot", "example_id", "question", "rationale", "cot_key"]).rename_columns(
            ["cot", "example_id", "question", "cot_text", "cot_key"])
        return SelfEvalTables(cots, pairs)

    return _on_connection(store, work)


def self_eval_rows(
    store: Source, split: str = "train", n_cots: int | None = None,
    sources: Sequence[Provenance] | None = None, n_evals: int | None = None,
) -> tuple[list[SelfEvalPair], int]:
    """Every stored CoT (cot_index < n_cots if given) of the allowed `sources` paired with every
    evaluation of it from the same teacher (eval_index < n_evals if given); `sources=None` allows
    every stored row.

    Pairs where the CoT or the evaluation did not parse are left out; the second value counts them.
    """
    tables = self_eval_tables(store, split, n_cots, sources, n_evals)
    pairs = arrow.where(tables.pairs, pc.invert(tables.pairs.column("excluded")))
    cot = pairs.column("cot")
    columns = [tables.cots.column(name).take(cot).to_pylist() for name in ("example_id", "question", "cot_text")]
    columns += [pairs.column(name).to_pylist() for name in ("verdict", "eval_rationale")]
    cot_keys = tables.cots.column("cot_key").take(cot).to_pylist()
    kept = [SelfEvalPair(*values, cot_key=cot_key, eval_key=eval_key)
            for *values, cot_key, eval_key in zip(*columns, cot_keys, pairs.column("eval_key").to_pylist())]
    return kept, tables.pairs.num_rows - len(kept)


@dataclass(frozen=True)
class JudgedCot:
    """A chosen CoT with its example's gold label and the verdicts its teacher gave it."""

    example_id: str
    input: str
    gold: str
    answer: str
    rationale: str
    cot_key: str
    verdicts: int  # parsed self-evaluations of it (eval_index < n_evals)
    said_correct: int  # of those, how many say "correct"


def judged_cot_table(
    store: Source, split: str = "train", n_cots: int = 1, sources: Sequence[Provenance] | None = None,
    n_evals: int | None = None, verdicts: bool = True, chosen: pa.Table | None = None,
) -> tuple[pa.Table, int]:
    """What judged_cots returns, as Arrow columns (JudgedCot's fields), and how many CoTs did not
    parse. Without `verdicts` the evaluations are not read and both counts are 0. `chosen`:
    chosen_cots of the same split, n_cots and sources, if already read."""
    if n_cots < 1:
        raise ValueError(f"n_cots must be >= 1, not {n_cots}")

    def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
        judged = _judged(con, split, n_cots, sources, chosen)
        try:
            counted = con.sql(_VERDICTS_SQL, params={"n_evals": _limit(n_evals)}).to_arrow_table() \
                if verdicts else None
        finally:
            con.unregister("_judged")
        return _with_verdicts(judged, counted)

    table = _on_connection(store, work)
    table = table.rename_columns(["input" if name == "question" else name for name in table.column_names])
    kept = arrow.where(table, pc.invert(table.column("excluded")))
    return kept.select([f.name for f in dataclasses.fields(JudgedCot)]), table.num_rows - kept.num_rows


def _with_verdicts(judged: pa.Table, counted: pa.Table | None) -> pa.Table:
    """`judged` with each CoT's count of parsed verdicts and of those saying "correct" (0 when none)."""
    for name in ("verdicts", "said_correct"):
        values = np.zeros(judged.num_rows, np.int64)
        if counted is not None:
            values[arrow.to_numpy(counted.column("cot"))] = arrow.to_numpy(counted.column(name))
        judged = judged.append_column(name, arrow.numbers(values))
    return judged


def judged_cots(
    store: Source, split: str = "train", n_cots: int = 1, sources: Sequence[Provenance] | None = None,
    n_evals: int | None = None,
) -> tuple[list[JudgedCot], int]:
    """One entry per stored CoT with cot_index < n_cots from each allowed provenance (so one source
    gives at most n_cots per example), with the count of its parsed self-evaluations from the same
    teacher (eval_index < n_evals if given) and of those saying "correct". `sources=None` allows
    every stored row. Unparseable CoTs are left out; the second value counts them."""
    table, excluded = judged_cot_table(store, split, n_cots, sources, n_evals)
    return _records(JudgedCot, table), excluded


def cot_rows(
    store: Source, split: str = "train", n_cots: int = 1, labels: Literal["gold", "teacher"] = "gold",
    sources: Sequence[Provenance] | None = None,
) -> tuple[list[TrainingRow], int]:
    """One row per stored CoT with cot_index < n_cots from each allowed provenance (see
    judged_cots): input = question, rationale = the CoT's rationale, label = the gold label or the
    teacher's parsed answer. Unparseable CoTs are left out; the second value counts them."""
    if labels not in ("gold", "teacher"):
        raise ValueError(f"labels must be 'gold' or 'teacher', not {labels!r}")
    cots, excluded = judged_cots(store, split, n_cots, sources)
    rows = [TrainingRow(c.example_id, c.input, c.gold if labels == "gold" else c.answer, c.rationale)
            for c in cots]
    return rows, excluded


def label_rows(store: Source, split: str) -> list[TrainingRow]:
    """Question and gold label of every example in the split (no rationale): standard
    fine-tuning, validation and test."""
    return [
        TrainingRow(example.example_id, example.input, example.label, None)
        for example in examples(store, [split])
    ]
