"""The student's training sets, built from what the store holds.

Rows are chosen by provenance (train.sources: where a CoT came from, which teacher, which prompt
version), so a prompt change, a second teacher or an import never adds CoTs to an arm's set unless
the config mixes them on purpose. Unparseable teacher outputs are left out and counted, never
trained on as blank rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from storage import Store, queries
from storage.queries import JudgedCot, Provenance, TrainingRow
from tasks.answers import answers_match
from tasks.config import ArmConfig, Config
from tasks.data.datasets import answer_type
from tasks.data.noise import add_label_noise
from tasks.teacher.endpoint import SIMULATED_MODEL
from tasks.teacher.prompts import format_judged_input, prompt_version


@dataclass(frozen=True)
class TrainingSet:
    rows: list[TrainingRow]
    excluded: int  # rows left out because the teacher's output did not parse
    filtered: int = 0  # parsed CoTs an arm's cot_filter left out
    noised: tuple[str, ...] = ()  # examples an arm's label_noise gave a wrong label


# A server names the model that answered: OpenAI a dated snapshot of the one asked for
# ("gpt-4o-mini" -> "gpt-4o-mini-2024-07-18", "gpt-3.5-turbo" -> "gpt-3.5-turbo-0125").
_SNAPSHOT = r"-(\d{4}-\d{2}-\d{2}|\d{4})"


def answered_by(asked: str, stored: str, simulate: bool = False) -> bool:
    """Whether `stored` (the model a reply named) is the model `asked` for: itself, a dated
    snapshot of it, or the built-in simulated teacher when the run simulates its teacher."""
    return stored == asked or re.fullmatch(re.escape(asked) + _SNAPSHOT, stored) is not None or (
        simulate and stored == SIMULATED_MODEL
    )


def provenances(config: Config, store: Store) -> list[Provenance]:
    """train.sources resolved: a `teacher` source without a model or versions means the models that
    answered this run's teacher.model (see answered_by) and the current prompt versions of the
    dataset's answer type."""
    kind = answer_type(config.dataset)
    stored = {row.teacher_model for row in queries.stored_sources(store, "train") if row.source == "teacher"}
    resolved = []
    for source in config.train.sources:
        if source.source != "teacher":
            models = None if source.teacher_model is None else (source.teacher_model,)
            resolved.append(Provenance(source.source, models, source.cot_prompt_version,
                                       source.eval_prompt_version))
            continue
        if source.teacher_model is not None:
            models = (source.teacher_model,)
        else:
            asked, simulate = config.teacher.model, config.teacher.simulate
            models = tuple(sorted(m for m in stored if answered_by(asked, m, simulate))) or (asked,)
        resolved.append(Provenance(
            "teacher", models,
            source.cot_prompt_version or prompt_version(kind, "cot"),
            source.eval_prompt_version or prompt_version(kind, "evaluation"),
        ))
    return resolved


def describe_stored(store: Store, split: str = "train") -> str:
    """What the split's stored CoTs come from, for a message that says which train.sources to name."""
    found = queries.stored_sources(store, split)
    if not found:
        return f"the store has no {split} CoTs"
    return "the store's train CoTs come from " + "; ".join(
        f"source {row.source}, teacher_model {row.teacher_model}, prompt version {row.prompt_version} "
        f"({row.cots} CoTs)" for row in found
    )


def self_eval_set(store: Store, split: str = "train", n_cots: int | None = None,
                  sources: Sequence[Provenance] | None = None, n_evals: int | None = None) -> TrainingSet:
    """Input = the question with a chain of thought, label = the teacher's verdict on it,
    rationale = the evaluation text; every CoT (index < n_cots) of `sources` x every evaluation of
    it (index < n_evals)."""
    pairs, excluded = queries.self_eval_rows(store, split, n_cots, sources, n_evals)
    inputs: dict[tuple[str, str], str] = {}  # one per judged CoT, shared by its evaluations
    rows = []
    for pair in pairs:
        judged = (pair.question, pair.cot_text)
        if judged not in inputs:
            inputs[judged] = format_judged_input(*judged)
        rows.append(TrainingRow(pair.example_id, inputs[judged], pair.verdict, pair.eval_rationale))
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


def _kept(cot: JudgedCot, cot_filter: str | None, kind: str) -> bool:
    if cot_filter == "teacher_verdict":
        return 2 * cot.said_correct > cot.verdicts  # a strict majority of its parsed verdicts
    if cot_filter == "gold":
        return answers_match(kind, cot.answer, cot.gold)
    return True


def _arm_cots(store: Store, arm: ArmConfig, sources: Sequence[Provenance] | None, kind: str,
              split: str) -> tuple[list[JudgedCot], int, int]:
    """The CoTs an arm's stage 2 trains on, how many did not parse, how many its cot_filter left out
    (standard distillation: the teacher's first CoT of each example)."""
    k = arm.n_cots if arm.mode == "cot" else 1
    cots, excluded = queries.judged_cots(store, split, k, sources, arm.n_evals)
    kept = [cot for cot in cots if _kept(cot, arm.cot_filter, kind)]
    return kept, excluded, len(cots) - len(kept)


def arm_training_set(store: Store, arm: ArmConfig, sources: Sequence[Provenance], kind: str,
                     split: str = "train") -> TrainingSet:
    """The stage-2 rows of an arm: gold labels (standard fine-tuning) or its CoTs (the teacher's
    label of the first CoT for standard distillation), less the CoTs `arm.cot_filter` rejects,
    with `arm.label_noise` of its examples given a wrong label."""
    if arm.mode == "standard" and arm.labels == "gold":
        training = label_set(store, split)
    else:
        kept, excluded, filtered = _arm_cots(store, arm, sources, kind, split)
        rows = [TrainingRow(c.example_id, c.input, c.gold if arm.labels == "gold" else c.answer, c.rationale)
                for c in kept]
        training = TrainingSet(rows, excluded, filtered)
    if not arm.label_noise:
        return training
    noisy = add_label_noise(training.rows, arm.label_noise, arm.label_noise_seed, kind)
    return TrainingSet(noisy.rows, training.excluded, training.filtered, tuple(sorted(noisy.noised)))


def arm_self_eval_set(store: Store, arm: ArmConfig, sources: Sequence[Provenance],
                      split: str = "train") -> TrainingSet:
    """The stage-1 rows of an arm: every evaluation (the first `arm.n_evals`) of its CoTs."""
    return self_eval_set(store, split, arm.n_cots, sources, arm.n_evals)


def arm_sample_keys(store: Store, arm: ArmConfig, sources: Sequence[Provenance] | None, kind: str,
                    split: str = "train") -> tuple[set[str], set[str]]:
    """The stored teacher samples an arm trains on: the keys of its CoTs (stage 2, and those judged
    in stage 1) and of its self-evaluations (stage 1). Standard fine-tuning uses none."""
    cots: set[str] = set()
    if not (arm.mode == "standard" and arm.labels == "gold"):
        cots = {cot.cot_key for cot in _arm_cots(store, arm, sources, kind, split)[0]}
    evaluations: set[str] = set()
    if arm.self_eval:
        pairs, _ = queries.self_eval_rows(store, split, arm.n_cots, sources, arm.n_evals)
        cots |= {pair.cot_key for pair in pairs}
        evaluations = {pair.eval_key for pair in pairs}
    return cots, evaluations


def canonical_order(rows: Sequence) -> list:
    """The rows sorted by content: training then depends on which rows the store holds, not their order."""
    return sorted(rows, key=lambda r: (r.input, r.label, r.rationale or "", getattr(r, "example_id", "")))


def data_snapshot(rows: Sequence) -> str:
    """A hash of the training rows (input, label, rationale) that names the data a checkpoint saw."""
    digest = hashlib.sha256()
    for row in canonical_order(rows):
        task = [row.task] if getattr(row, "task", "answer") != "answer" else []  # answer rows hash as before
        digest.update(json.dumps([row.input, row.label, row.rationale, *task]).encode())
    return digest.hexdigest()[:16]
