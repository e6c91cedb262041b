"""Worse labels on purpose (an arm's `label_noise`): how much does the student lean on them?

A share of the training examples, drawn with a seed, get a wrong label: a value drawn from the
training set's label distribution (one label per example) that matches none of the example's own
labels under the answer type's matching. Every row of such an example carries it, and a rationale
whose final sentence states the answer ("... The answer is X.") states the new one instead; a
rationale without such a sentence (or a row without rationale) keeps its text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from storage.queries import TrainingRow
from tasks.answers import answers_match

_ANSWER_SENTENCE = re.compile(r"(\banswer is\b\s*:?\s*)([^\n]*?)\.?$", re.IGNORECASE)
_DRAWS = 100  # tries at a wrong label by rejection before scanning the whole distribution


@dataclass(frozen=True)
class NoisyRows:
    rows: list[TrainingRow]
    noised: dict[str, str]  # example id -> the wrong label it was given


def restate_answer(rationale: str | None, label: str) -> str | None:
    """The rationale with its final sentence's answer replaced by `label`, if it ends in one."""
    if not rationale:
        return rationale
    body = rationale.rstrip()
    start = max(body.rfind("\n"), body.rstrip(".").rfind(". ")) + 1  # where the final sentence starts
    match = _ANSWER_SENTENCE.search(body, start)
    if match is None:
        return rationale
    return body[: match.start(2)] + label + body[match.end(2):] + rationale[len(body):]


def _wrong_label(rng: random.Random, pool: Sequence[str], own: set[str], answer_type: str) -> str | None:
    def wrong(value: str) -> bool:
        return not any(answers_match(answer_type, value, label) for label in own)

    for _ in range(_DRAWS):
        value = rng.choice(pool)
        if wrong(value):
            return value
    candidates = [value for value in pool if wrong(value)]
    return rng.choice(candidates) if candidates else None


def add_label_noise(rows: Sequence[TrainingRow], share: float, seed: int, answer_type: str) -> NoisyRows:
    """round(share x examples) examples of `rows` with a wrong label, chosen and drawn with `seed`.

    An example whose labels no other value of the distribution differs from keeps its rows."""
    labels: dict[str, set[str]] = {}
    for row in rows:
        labels.setdefault(row.example_id, set()).add(row.label)
    examples = sorted(labels)
    if share <= 0 or not examples:
        return NoisyRows(list(rows), {})
    rng = random.Random(f"label-noise:{seed}")
    pool = [min(labels[example_id]) for example_id in examples]  # one label per example
    noised = {}
    for example_id in sorted(rng.sample(examples, round(share * len(examples)))):
        wrong = _wrong_label(rng, pool, labels[example_id], answer_type)
        if wrong is not None:
            noised[example_id] = wrong
    changed = [
        replace(row, label=noised[row.example_id], rationale=restate_answer(row.rationale, noised[row.example_id]))
        if row.example_id in noised else row
        for row in rows
    ]
    return NoisyRows(changed, noised)
