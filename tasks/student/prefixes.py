"""The task prefixes a student input starts with: one per task the student is trained on.

A question is two tasks (distilling step-by-step): `predict:` gives the label, `explain:` the
rationale. A self-evaluation row (stage 1, and stage 2's replay) is the judging pair: `judge:` gives
the verdict on a judged chain of thought, `critique:` the evaluation text. Separate prefixes keep a
student that learned to judge from answering a question with a verdict word or an evaluation.
Training, evaluation, decoding and the tiny tokenizer all read them from here.
"""

from typing import NamedTuple

PREDICT = "predict: "
EXPLAIN = "explain: "
JUDGE = "judge: "
CRITIQUE = "critique: "
PREFIXES = (PREDICT, EXPLAIN, JUDGE, CRITIQUE)


class Task(NamedTuple):
    label: str  # the prefix of the label task
    rationale: str  # the prefix of the rationale task


TASKS = {"answer": Task(PREDICT, EXPLAIN), "judge": Task(JUDGE, CRITIQUE)}


def task_of(row) -> Task:
    """A row's prefixes, by its `task` (tasks.student.stages.Row); rows without one answer questions."""
    return TASKS[getattr(row, "task", "answer")]
