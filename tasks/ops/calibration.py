"""The teacher's self-evaluations checked against gold: for `status`, `status --json` and `sql`.

The paper trusts the teacher's verdicts; here every judged CoT whose example has a gold label is
scored with the same answer matching as the students (tasks.answers.answers_match, once per
distinct answer and gold label), and
storage.queries.calibration counts verdict by truth per teacher model and prompt version.
"""

from __future__ import annotations

import dataclasses
import re

from storage import Store, queries
from storage.queries.common import Source
from tasks.answers import answers_match


def answer_truth(store: Source, answer_type: str) -> dict[tuple[str, str], bool]:
    """(answer, gold label) -> whether they match, for every distinct pair among the judged CoTs."""
    return {(row.answer, row.gold): answers_match(answer_type, row.answer, row.gold)
            for row in queries.judged_answers(store)}


def calibration_counts(store: Source, answer_type: str) -> list[dict]:
    """The `calibration` view's rows as plain values (raw counts, then the ratios, rounded)."""
    rows = queries.calibration(store, answer_truth(store, answer_type))
    return [
        {key: round(value, 4) if isinstance(value, float) else value for key, value in dataclasses.asdict(row).items()}
        for row in rows
    ]


def names_calibration(sql: str) -> bool:
    """Whether a user query reads a view built on answer matching (only then is the truth computed)."""
    return any(re.search(rf"\b{name}\b", sql, re.IGNORECASE) for name in queries.CALIBRATION_VIEWS)


def sql_truth(store: Store, answer_type: str, sql: str) -> dict[tuple[str, str], bool] | None:
    """The truth `queries.run_sql` needs to build the calibration views, when `sql` reads them."""
    return answer_truth(store, answer_type) if names_calibration(sql) else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def describe_calibration(rows: list[dict]) -> list[str]:
    """A short block for `status`: one verdict-by-truth matrix and its ratios per teacher and prompt."""
    if not rows:
        return ["  no judged CoT with a gold label yet"]
    lines = []
    for row in rows:
        lines += [
            f"  {row['teacher_model']} / {row['prompt_version']}: {row['evaluations']} verdicts on "
            f"{row['judged_cots']} CoTs",
            "    verdict     answer right  answer wrong",
            *(f"    {verdict:<11} {row[f'{verdict}_on_right']:>12}  {row[f'{verdict}_on_wrong']:>12}"
              for verdict in ("correct", "wrong", "uncertain")),
            f"    'correct': precision {_ratio(row['precision_correct'])}, recall {_ratio(row['recall_correct'])}; "
            f"'wrong': precision {_ratio(row['precision_wrong'])}, recall {_ratio(row['recall_wrong'])}; "
            f"majority verdict right on {row['majority_right']}/{row['judged_cots']} CoTs "
            f"({_ratio(row['majority_accuracy'])})",
        ]
    return lines
