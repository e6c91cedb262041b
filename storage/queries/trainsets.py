"""Training sets: stored examples, chains of thought and self-evaluations chosen by provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from storage.queries.common import Source, _records, _rows, _run
from storage.queries.generation import examples


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
       c.key AS cot_key, v.key AS eval_key, c.parse_error IS NOT NULL OR v.parse_error IS NOT NULL AS excluded
FROM evaluations v
JOIN chosen c ON c.key = v.cot_key
JOIN examples x ON x.example_id = c.example_id
WHERE x.split = $split AND (c._eval_version IS NULL OR c._eval_version = v.prompt_version)
  AND v.teacher_model = c.teacher_model
  -- an evaluation older than the CoT row judged a text since lost and bought again (repair)
  AND v.created_at >= c.created_at
  AND v.eval_index < $n_evals
QUALIFY row_number() OVER (PARTITION BY c.key, v.key) = 1
ORDER BY x.example_id, c.cot_index, c.key, v.eval_index, v.key
"""


_ALL = 2**31 - 1  # cot_index and eval_index are int32: "no limit"


def self_eval_rows(
    store: Source, split: str = "train", n_cots: int | None = None,
    sources: Sequence[Provenance] | None = None, n_evals: int | None = None,
) -> tuple[list[SelfEvalPair], int]:
    """Every stored CoT (cot_index < n_cots if given) of the allowed `sources` paired with every
    evaluation of it from the same teacher (eval_index < n_evals if given); `sources=None` allows
    every stored row.

    Pairs where the CoT or the evaluation did not parse are left out; the second value counts them.
    """
    limits = {"n_cots": _ALL if n_cots is None else n_cots, "n_evals": _ALL if n_evals is None else n_evals}
    table = _run(store, _SELF_EVAL_SQL, {"split": split, **limits}, tables={"_sources": _provenance_table(sources)})
    # Column by column: a million pairs as one dict each would cost seconds.
    names = ("example_id", "question", "cot_text", "verdict", "eval_rationale", "cot_key", "eval_key", "excluded")
    kept = [SelfEvalPair(*values[:-1]) for values in zip(*(table.column(n).to_pylist() for n in names))
            if not values[-1]]
    return kept, table.num_rows - len(kept)


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


_COT_SQL = _CHOSEN_COTS + """, judged AS (
    SELECT c.key, count(*) AS verdicts, count(*) FILTER (WHERE v.verdict = 'correct') AS said_correct
    FROM chosen c JOIN evaluations v ON v.cot_key = c.key
    WHERE (c._eval_version IS NULL OR c._eval_version = v.prompt_version) AND v.teacher_model = c.teacher_model
      AND v.created_at >= c.created_at AND v.eval_index < $n_evals AND v.verdict IS NOT NULL
    GROUP BY c.key
)
SELECT x.example_id, x.input, x.label AS gold, c.answer, c.rationale, c.key AS cot_key,
       coalesce(j.verdicts, 0) AS verdicts, coalesce(j.said_correct, 0) AS said_correct,
       c.parse_error IS NOT NULL AS excluded
FROM chosen c JOIN examples x ON x.example_id = c.example_id LEFT JOIN judged j ON j.key = c.key
WHERE x.split = $split
ORDER BY x.example_id, c.cot_index, c.source, c.teacher_model, c.prompt_version, c.key
"""


def judged_cots(
    store: Source, split: str = "train", n_cots: int = 1, sources: Sequence[Provenance] | None = None,
    n_evals: int | None = None,
) -> tuple[list[JudgedCot], int]:
    """One entry per stored CoT with cot_index < n_cots from each allowed provenance (so one source
    gives at most n_cots per example), with the count of its parsed self-evaluations from the same
    teacher (eval_index < n_evals if given) and of those saying "correct". `sources=None` allows
    every stored row. Unparseable CoTs are left out; the second value counts them."""
    if n_cots < 1:
        raise ValueError(f"n_cots must be >= 1, not {n_cots}")
    limits = {"n_cots": n_cots, "n_evals": _ALL if n_evals is None else n_evals}
    rows = _rows(_run(store, _COT_SQL, {"split": split, **limits}, tables={"_sources": _provenance_table(sources)}))
    kept = [JudgedCot(**{key: value for key, value in r.items() if key != "excluded"})
            for r in rows if not r["excluded"]]
    return kept, len(rows) - len(kept)


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
