"""The student's training sets, built from what the store holds.

Rows are chosen by provenance (train.sources: where a CoT came from, which teacher, which prompt
version), so a prompt change, a second teacher or an import never adds CoTs to an arm's set unless
the config mixes them on purpose. Unparseable teacher outputs are left out and counted, never
trained on as blank rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from storage import Store, queries
from storage.queries import Provenance, TrainingRow
from tasks.config import Config
from tasks.data.datasets import answer_type
from tasks.teacher.prompts import format_judged_input, prompt_version


@dataclass(frozen=True)
class TrainingSet:
    rows: list[TrainingRow]
    excluded: int  # rows left out because the teacher's output did not parse


def provenances(config: Config) -> list[Provenance]:
    """train.sources resolved: a `teacher` source without a model or versions means this run's
    teacher.model and the current prompt versions of the dataset's answer type."""
    kind = answer_type(config.dataset)
    resolved = []
    for source in config.train.sources:
        if source.source == "teacher":
            resolved.append(Provenance(
                "teacher",
                source.teacher_model or config.teacher.model,
                source.cot_prompt_version or prompt_version(kind, "cot"),
                source.eval_prompt_version or prompt_version(kind, "evaluation"),
            ))
        else:
            resolved.append(Provenance(source.source, source.teacher_model, source.cot_prompt_version,
                                       source.eval_prompt_version))
    return resolved


def self_eval_set(store: Store, split: str = "train", n_cots: int | None = None,
                  sources: Sequence[Provenance] | None = None) -> TrainingSet:
    """Input = the question with a chain of thought, label = the teacher's verdict on it,
    rationale = the evaluation text; every CoT (index < n_cots) of `sources` x every evaluation of it."""
    pairs, excluded = queries.self_eval_rows(store, split, n_cots, sources)
    rows = [
        TrainingRow(pair.example_id, format_judged_input(pair.question, pair.cot_text), pair.verdict,
                    pair.eval_rationale)
        for pair in pairs
    ]
    return TrainingSet(rows, excluded)


def cot_set(store: Store, split: str = "train", n_cots: int = 1,
            labels: Literal["gold", "teacher"] = "gold",
            sources: Sequence[Provenance] | None = None) -> TrainingSet:
    """Input = the question, label = the gold label or the teacher's answer, rationale = the CoT;
    one row per chain of thought of each of `sources` with index < n_cots."""
    rows, excluded = queries.cot_rows(store, split, n_cots, labels, sources)
    return TrainingSet(list(rows), excluded)


def label_set(store: Store, split: str) -> TrainingSet:
    """Input = the question, label = the gold label, no rationale (standard fine-tuning, scoring)."""
    return TrainingSet(queries.label_rows(store, split), 0)
