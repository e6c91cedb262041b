"""The student's training sets, built from what the store holds.

Unparseable teacher outputs are left out and counted, never trained on as blank rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storage import Store, queries
from storage.queries import TrainingRow
from tasks.teacher.prompts import format_judged_input


@dataclass(frozen=True)
class TrainingSet:
    rows: list[TrainingRow]
    excluded: int  # rows left out because the teacher's output did not parse


def self_eval_set(store: Store, split: str = "train", n_cots: int | None = None) -> TrainingSet:
    """Input = the question with a chain of thought, label = the teacher's verdict on it,
    rationale = the evaluation text; every CoT (index < n_cots) x every evaluation of it."""
    pairs, excluded = queries.self_eval_rows(store, split, n_cots)
    rows = [
        TrainingRow(pair.example_id, format_judged_input(pair.question, pair.cot_text), pair.verdict,
                    pair.eval_rationale)
        for pair in pairs
    ]
    return TrainingSet(rows, excluded)


def cot_set(store: Store, split: str = "train", n_cots: int = 1,
            labels: Literal["gold", "teacher"] = "gold") -> TrainingSet:
    """Input = the question, label = the gold label or the teacher's answer, rationale = the CoT;
    one row per chain of thought with index < n_cots."""
    rows, excluded = queries.cot_rows(store, split, n_cots, labels)
    return TrainingSet(list(rows), excluded)


def label_set(store: Store, split: str) -> TrainingSet:
    """Input = the question, label = the gold label, no rationale (standard fine-tuning, scoring)."""
    return TrainingSet(queries.label_rows(store, split), 0)
