"""How well the teacher's self-evaluations tell its right answers from its wrong ones.

Whether a CoT's answer equals its example's gold label needs the answer type's matching rules
(equations are evaluated), which live outside SQL: the caller passes that truth per distinct
(answer, gold) pair (a store of a million evaluations has a few thousand), and two views are built
on it for the connection:

- `judged_verdicts`: one row per parsed self-evaluation of a parsed CoT whose example has a gold
  label, with the CoT's answer, the gold label, `answer_right` and the verdict;
- `calibration`: per teacher model and evaluation prompt version, the confusion matrix of verdict
  (correct / wrong / uncertain) by truth (the answer is right / wrong) as counts
  `<verdict>_on_<truth>`, precision and recall of "correct" and of "wrong", and how often the
  majority verdict of a CoT (more than half of its verdicts) matches its truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from storage import arrow
from storage.queries.common import Source, _on_connection, _records, _run


@dataclass(frozen=True)
class JudgedAnswer:
    answer: str
    gold: str


def judged_answers(store: Source) -> list[JudgedAnswer]:
    """Each distinct (answer, gold label) of the parsed CoTs with at least one parsed self-evaluation
    whose example has a gold label."""
    sql = """
        SELECT DISTINCT c.answer, x.label AS gold
        FROM cots c JOIN examples x ON x.example_id = c.example_id
        SEMI JOIN (SELECT cot_key FROM evaluations WHERE verdict IS NOT NULL) v ON v.cot_key = c.key
        WHERE c.answer IS NOT NULL AND nullif(trim(x.label), '') IS NOT NULL
        ORDER BY c.answer, gold
    """
    return _records(JudgedAnswer, _run(store, sql))


_VIEWS = """
CREATE OR REPLACE TEMP VIEW judged_verdicts AS
SELECT v.teacher_model, v.prompt_version, v.source, x.split, c.example_id, c.key AS cot_key, v.key AS eval_key,
       v.eval_index, c.answer, x.label AS gold, t.answer_right, v.verdict
FROM evaluations v
JOIN cots c ON c.key = v.cot_key
JOIN examples x ON x.example_id = c.example_id
JOIN _answer_truth t ON t.answer = c.answer AND t.gold = x.label
WHERE v.verdict IS NOT NULL;

CREATE OR REPLACE TEMP VIEW calibration AS
WITH per_cot AS (
    SELECT teacher_model, prompt_version, cot_key, any_value(answer_right) AS answer_right, count(*) AS verdicts,
           count(*) FILTER (WHERE verdict = 'correct') AS said_correct,
           count(*) FILTER (WHERE verdict = 'wrong') AS said_wrong,
           count(*) FILTER (WHERE verdict = 'uncertain') AS said_uncertain
    FROM judged_verdicts GROUP BY ALL
), majority AS (
    SELECT teacher_model, prompt_version, count(*) AS judged_cots,
           count(*) FILTER (WHERE (answer_right AND 2 * said_correct > verdicts)
                               OR (NOT answer_right AND 2 * said_wrong > verdicts)) AS majority_right
    FROM per_cot GROUP BY ALL
), counts AS (  -- summed from per_cot: one pass over the evaluations
    SELECT teacher_model, prompt_version, sum(verdicts)::BIGINT AS evaluations,
           coalesce(sum(said_correct) FILTER (WHERE answer_right), 0)::BIGINT AS correct_on_right,
           coalesce(sum(said_correct) FILTER (WHERE NOT answer_right), 0)::BIGINT AS correct_on_wrong,
           coalesce(sum(said_wrong) FILTER (WHERE answer_right), 0)::BIGINT AS wrong_on_right,
           coalesce(sum(said_wrong) FILTER (WHERE NOT answer_right), 0)::BIGINT AS wrong_on_wrong,
           coalesce(sum(said_uncertain) FILTER (WHERE answer_right), 0)::BIGINT AS uncertain_on_right,
           coalesce(sum(said_uncertain) FILTER (WHERE NOT answer_right), 0)::BIGINT AS uncertain_on_wrong
    FROM per_cot GROUP BY ALL
)
SELECT c.*, m.judged_cots, m.majority_right,
       c.correct_on_right / nullif(c.correct_on_right + c.correct_on_wrong, 0) AS precision_correct,
       c.correct_on_right / nullif(c.correct_on_right + c.wrong_on_right + c.uncertain_on_right, 0)
           AS recall_correct,
       c.wrong_on_wrong / nullif(c.wrong_on_wrong + c.wrong_on_right, 0) AS precision_wrong,
       c.wrong_on_wrong / nullif(c.correct_on_wrong + c.wrong_on_wrong + c.uncertain_on_wrong, 0)
           AS recall_wrong,
       m.majority_right / m.judged_cots AS majority_accuracy
FROM counts c JOIN majority m USING (teacher_model, prompt_version)
ORDER BY teacher_model, prompt_version
"""

CALIBRATION_VIEWS = ("judged_verdicts", "calibration")


def add_calibration_views(con: duckdb.DuckDBPyConnection, truth: Mapping[tuple[str, str], bool]) -> None:
    """Create `judged_verdicts` and `calibration` on an open connection, from `truth`: (answer, gold
    label) -> whether the answer equals the label."""
    con.register("_answer_truth", pa.table({
        "answer": arrow.strings(answer for answer, _ in truth),
        "gold": arrow.strings(gold for _, gold in truth),
        "answer_right": arrow.booleans(truth.values()),
    }))
    for statement in _VIEWS.split(";\n\n"):
        con.execute(statement)


@dataclass(frozen=True)
class Calibration:
    """One teacher model and evaluation prompt version: the raw counts and what follows from them."""

    teacher_model: str
    prompt_version: str
    evaluations: int
    correct_on_right: int
    correct_on_wrong: int
    wrong_on_right: int
    wrong_on_wrong: int
    uncertain_on_right: int
    uncertain_on_wrong: int
    judged_cots: int
    majority_right: int
    precision_correct: float | None  # None: no verdict of that kind, or no answer of that truth
    recall_correct: float | None
    precision_wrong: float | None
    recall_wrong: float | None
    majority_accuracy: float | None


def calibration(store: Source, truth: Mapping[tuple[str, str], bool]) -> list[Calibration]:
    """The `calibration` view's rows for `truth` (see add_calibration_views)."""

    def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
        add_calibration_views(con, truth)
        return con.sql("SELECT * FROM calibration").to_arrow_table()

    table = _on_connection(store, work)
    return _records(Calibration, table)

