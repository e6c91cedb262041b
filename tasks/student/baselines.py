"""What a student must beat: the constant answer, and the teacher's own accuracy."""

from __future__ import annotations

from collections import Counter

from storage import ResultRow, Store, queries
from tasks.answers import answers_match
from tasks.config import Config
from tasks.data.datasets import answer_type as answer_type_of
from tasks.data.trainsets import label_set


def score_baselines(config: Config) -> dict[str, float]:
    """The constant baseline (the most common train label, said for every test question) and the
    teacher's own accuracy on its stored chains of thought."""
    store = Store(config.store.path)
    kind = answer_type_of(config.dataset)
    train, test = label_set(store, "train").rows, label_set(store, "test").rows
    results = []
    if train and test:
        constant = Counter(row.label for row in train).most_common(1)[0][0]
        hits = sum(answers_match(kind, constant, row.label) for row in test)
        results.append(ResultRow(arm="baseline:constant", split="test", metric="accuracy",
                                 value=hits / len(test), n=len(test), checkpoint=constant))
    teacher = queries.teacher_answers(store)
    if teacher:
        hits = sum(answers_match(kind, answer, gold) for answer, gold in teacher)
        results.append(ResultRow(arm="teacher", split="train", metric="accuracy", value=hits / len(teacher),
                                 n=len(teacher), checkpoint="stored chains of thought"))
    store.append(results)
    return {result.arm: result.value for result in results}
