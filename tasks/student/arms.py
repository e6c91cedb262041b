"""Train and score the student arms of a config, from what the store holds.

Checkpoints live under `<store>/students/<arm>/`; scores go to the `predictions` and `results`
tables. Checkpoint selection uses the validation split (carved from train); test is only scored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from storage import PredictionRow, ResultRow, Store, queries
from tasks.answers import answers_match
from tasks.config import ArmConfig, Config, EvalConfig
from tasks.data.datasets import answer_type as answer_type_of
from tasks.data.trainsets import (
    arm_self_eval_set,
    arm_training_set,
    describe_stored,
    label_set,
    provenances,
    self_eval_set,
)
from tasks.student import freshness
from tasks.student.decoding import (
    SAMPLING_MODES,
    Candidate,
    choose,
    judge_candidates,
    passes_per_question,
    sample_candidates,
)
from tasks.student.evaluation import (
    EXPLAIN,
    PREDICT,
    evaluate_student,
    label_accuracy,
    predict,
    resolve_device,
    use_bf16,
)
from tasks.student.model import load_student
from tasks.student.stages import train_arm


def limit_cpu_threads() -> None:
    """Leave one core to the rest of the process (Prefect, the store, a teacher server).

    Measured on 2 cores: with the default of one thread per core and another busy process, a
    training step of the tiny student took 60x longer than with one thread (OpenMP threads spin
    while waiting for a core).
    """
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - 1)))


class NothingToTrain(ValueError):
    """The store lacks the rows an arm needs; the message says which command fills them."""


@dataclass(frozen=True)
class TrainedArm:
    arm: str
    checkpoint: str
    validation_accuracy: float | None  # None without validation rows (the last step is kept)
    train_rows: int
    excluded_rows: int  # unparseable teacher outputs left out
    examples_per_s: float
    self_eval_checkpoint: str | None = None  # stage 1's best checkpoint, for arms with self_eval
    unchanged: bool = False  # skipped: trained before on the same inputs (tasks.student.freshness)
    validation_rows: int = 0  # the rows validation_accuracy is measured on
    self_eval_agreement: float | None = None  # stage 1's best, on validation self-evaluations
    self_eval_validation_rows: int = 0
    replayed_rows: int = 0  # stage-1 rows mixed into stage 2 (train.self_eval_replay)

    def describe(self) -> str:
        """One line for the terminal: what was trained on, what it scored on which rows."""
        if self.validation_accuracy is None:
            scored = "no validation rows (kept the last step)"
        else:
            scored = f"validation accuracy {self.validation_accuracy:.4f} on {self.validation_rows} validation rows"
        line = f"{self.arm}: {scored}; trained on {self.train_rows} rows ({self.excluded_rows} unparseable left out"
        line += f", {self.replayed_rows} self-evaluations replayed)" if self.replayed_rows else ")"
        if self.self_eval_checkpoint is not None:
            line += (f"; stage 1 self-eval agreement {self.self_eval_agreement:.4f} on "
                     f"{self.self_eval_validation_rows} validation rows" if self.self_eval_agreement is not None
                     else "; stage 1 kept its last step (no validation self-evaluations)")
        return f"{line}; {self.examples_per_s:.1f} examples/s -> {self.checkpoint}"


def arm_folder(config: Config, arm: str) -> Path:
    folder = Store(config.store.path).local_folder()
    if folder is None:
        raise NothingToTrain("training needs a local store path: checkpoints are written beside it")
    return folder / "students" / arm


def _arm(config: Config, name: str) -> ArmConfig:
    for arm in config.train.arms:
        if arm.name == name:
            return arm
    raise NothingToTrain(f"no arm named {name!r}; the config has {[arm.name for arm in config.train.arms]}")


def train_one(config: Config, name: str, resume: bool = False, progress: bool = True,
              force: bool = False) -> TrainedArm:
    arm = _arm(config, name)
    limit_cpu_threads()
    store = Store(config.store.path)
    kind = answer_type_of(config.dataset)
    sources = provenances(config, store)
    training = arm_training_set(store, arm, sources, kind)
    validation = label_set(store, "validation").rows
    if not training.rows:
        raise NothingToTrain(
            f"arm {name!r}: no usable training rows from train.sources ({describe_stored(store)}); run "
            "`mindsmirror generate CONFIG` or `mindsmirror import dss CONFIG`, or name a stored source, teacher_model "
            "or prompt version in train.sources"
        )
    self_eval = arm_self_eval_set(store, arm, sources) if arm.self_eval else None
    if arm.self_eval and not self_eval.rows:
        raise NothingToTrain(f"arm {name!r} wants self-evaluations but none are stored for the CoTs of "
                             f"train.sources ({describe_stored(store)}); generate them first")
    # Stage 1 is picked on verdict agreement with the teacher on validation examples' judged CoTs.
    judged = self_eval_set(store, "validation", arm.n_cots, sources).rows if arm.self_eval else []
    folder = arm_folder(config, name)
    inputs = freshness.training_inputs(config, arm, training.rows, validation,
                                       self_eval.rows if self_eval else (), judged)
    if not force and (record := freshness.trained_is_current(folder, inputs)):
        return _trained_from(record, folder)
    result = train_arm(
        arm,
        train_rows=training.rows,
        validation_rows=validation,
        self_eval_rows=self_eval.rows if self_eval else (),
        self_eval_validation=judged,
        train_cfg=config.train,
        student_cfg=config.student,
        eval_cfg=config.evaluate,
        out_dir=arm_folder(config, name),
        accuracy_fn=lambda predictions, golds: label_accuracy(predictions, golds, kind),
        resume=resume,
        progress=progress,
    )
    trained = TrainedArm(
        arm=name,
        checkpoint=str(result.checkpoint),
        validation_accuracy=result.stage2.best_accuracy,
        train_rows=len(training.rows),
        excluded_rows=training.excluded + (self_eval.excluded if self_eval else 0),
        examples_per_s=result.stage2.examples_per_s,
        self_eval_checkpoint=str(result.stage1.checkpoint) if result.stage1 else None,
        validation_rows=len(validation),
        self_eval_agreement=result.stage1.best_accuracy if result.stage1 else None,
        self_eval_validation_rows=len(judged),
        replayed_rows=result.replayed,
    )
    # The pointer evaluation follows: relative, so the store can move between machines.
    record = {
        "inputs": inputs,
        **dataclasses.asdict(trained),
        "checkpoint": str(Path(result.checkpoint).relative_to(folder)),
        "self_eval_checkpoint": result.stage1 and str(Path(result.stage1.checkpoint).relative_to(folder)),
    }
    (folder / "trained.json").write_text(json.dumps(record, indent=2))
    return trained


def _trained_from(record: dict, folder: Path) -> TrainedArm:
    fields = {f.name for f in dataclasses.fields(TrainedArm)} & set(record)
    arm = TrainedArm(**{key: record[key] for key in fields})
    self_eval = record.get("self_eval_checkpoint")
    return dataclasses.replace(arm, checkpoint=str(folder / record["checkpoint"]),
                               self_eval_checkpoint=self_eval and str(folder / self_eval), unchanged=True)


def _checkpoints(config: Config, name: str) -> tuple[Path, Path | None]:
    """The arm's best checkpoint and, for arms with self_eval, its best stage-1 checkpoint."""
    pointer = arm_folder(config, name) / "trained.json"
    if not pointer.is_file():
        raise NothingToTrain(f"arm {name!r} has not been trained yet; run `mindsmirror train CONFIG`")
    record = json.loads(pointer.read_text())
    self_eval = record.get("self_eval_checkpoint")
    return pointer.parent / record["checkpoint"], self_eval and pointer.parent / self_eval


def evaluate_one(config: Config, name: str, progress: bool = False, force: bool = False) -> dict[str, float] | None:
    """Score an arm's best checkpoint on test (greedy, and each sampling mode of evaluate.decode),
    and for arms with self_eval the self-evaluation agreement of their stage-1 checkpoint (and of
    the final student when stage 2 replayed self-evaluations: without replay it answers a judged
    input with an answer, not a verdict). None: skipped, the arm's scores in the store were made
    from the same inputs (unless `force`)."""
    store = Store(config.store.path)
    kind = answer_type_of(config.dataset)
    arm = _arm(config, name)
    checkpoint, self_eval_checkpoint = _checkpoints(config, name)
    folder = arm_folder(config, name)
    inputs = freshness.evaluation_inputs(
        config, freshness.read_record(folder, freshness.TRAINED) or {}, [checkpoint, self_eval_checkpoint],
        {split: label_set(store, split).rows for split in ("test", "validation")}
        | {"judged": self_eval_set(store, "validation", None, provenances(config, store)).rows},
    )
    if not force and freshness.evaluated_is_current(store, folder, name, inputs):
        return None
    limit_cpu_threads()
    model, tokenizer = load_student(checkpoint)
    device = resolve_device(config.train.device)
    model.to(device)
    options = dict(device=device, max_input_length=config.student.max_input_length,
                   bf16=use_bf16(config.train.bf16, device), progress=progress)
    test = label_set(store, "test").rows
    scored = evaluate_student(model, tokenizer, test, kind, config.evaluate, explain=True, **options)
    store.append([
        PredictionRow(arm=name, split="test", example_id=row.example_id, prediction=prediction,
                      rationale=rationale, label=row.label, correct=correct, checkpoint=str(checkpoint))
        for row, prediction, rationale, correct in zip(
            test, scored.predictions, scored.rationales, scored.correct)
    ])
    results = [ResultRow(arm=name, split="test", metric="accuracy", value=scored.accuracy, n=scored.n,
                         checkpoint=str(checkpoint))]
    results += _sampled_results(model, tokenizer, name, test, kind, config, str(checkpoint), options)
    validation = label_set(store, "validation").rows
    if validation:
        checked = evaluate_student(model, tokenizer, validation, kind, config.evaluate, **options)
        results.append(ResultRow(arm=name, split="validation", metric="accuracy", value=checked.accuracy,
                                 n=checked.n, checkpoint=str(checkpoint)))
    # Agreement with the teacher's verdicts, on judged CoTs of examples the student never trained on.
    judged = self_eval_set(store, "validation", None, provenances(config, store)).rows
    judges = [("self_eval_agreement", self_eval_checkpoint)]
    if arm.self_eval and config.train.self_eval_replay > 0:
        judges.append(("self_eval_agreement_final", checkpoint))
    for metric, judge_checkpoint in judges:
        if not judged or judge_checkpoint is None:
            continue
        judge, judge_tokenizer = load_student(judge_checkpoint)
        judge.to(device)
        agreement = evaluate_student(judge, judge_tokenizer, judged, "verdict", config.evaluate, **options)
        results.append(ResultRow(arm=name, split="validation", metric=metric, value=agreement.accuracy,
                                 n=agreement.n, checkpoint=str(judge_checkpoint)))
    store.append(results)
    freshness.record_evaluation(folder, inputs, results)
    return {f"{result.split}:{result.metric}": result.value for result in results}


def _sampled_results(model, tokenizer, name, rows, kind, config: Config, checkpoint: str, options) -> list[ResultRow]:
    """Test accuracy and passes per question of each sampling mode in evaluate.decode (greedy is
    always scored); the modes share one set of seeded candidates."""
    modes = [mode for mode in config.evaluate.decode if mode in SAMPLING_MODES]
    if not modes or not rows:
        return []
    questions = [row.input for row in rows]
    candidates = sample_candidates(model, tokenizer, questions, kind, config.evaluate, **options)
    if "self_verify" in modes:
        judging = {key: options[key] for key in ("device", "max_input_length", "bf16")}
        candidates = judge_candidates(model, tokenizer, questions, candidates, config.evaluate.batch_size, **judging)
    results = []
    for mode in modes:
        hits = sum(answers_match(kind, choose(row, mode, kind).answer, gold.label)
                   for row, gold in zip(candidates, rows))
        results.append(ResultRow(arm=name, split="test", metric=f"accuracy:{mode}", value=hits / len(rows),
                                 n=len(rows), checkpoint=checkpoint))
        results.append(ResultRow(arm=name, split="test", metric=f"passes:{mode}", n=len(rows),
                                 value=float(passes_per_question(mode, config.evaluate.samples)),
                                 checkpoint=checkpoint))
    return results


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


@dataclass(frozen=True)
class Answer:
    label: str
    rationale: str
    candidates: tuple[Candidate, ...] = ()  # the sampling modes' candidates, with verdicts for self_verify
    chosen: int | None = None  # the candidate that answered


def answer_question(model_dir: str, question: str, max_new_tokens: int = 128, *, decode: str = "greedy",
                    samples: int = 5, temperature: float = 1.0, seed: int = 0,
                    answer_type: str = "text") -> Answer:
    """A trained student's answer to one question: greedy (`predict:` label, `explain:` rationale),
    or the candidate a sampling mode chooses (see tasks.student.decoding)."""
    if not Path(model_dir, "config.json").is_file():
        raise NothingToTrain(f"{model_dir}: not a student checkpoint (no config.json); see `trained.json` "
                             "in the arm's folder for its best checkpoint")
    limit_cpu_threads()
    model, tokenizer = load_student(model_dir)
    if decode == "greedy":
        label, rationale = (
            predict(model, tokenizer, [question], max_new_tokens=max_new_tokens, prefix=prefix, device="cpu")[0]
            for prefix in (PREDICT, EXPLAIN)
        )
        return Answer(label, rationale)
    cfg = EvalConfig(max_new_tokens=max_new_tokens, samples=samples, temperature=temperature, seed=seed)
    candidates = sample_candidates(model, tokenizer, [question], answer_type, cfg, device="cpu")
    if decode == "self_verify":
        candidates = judge_candidates(model, tokenizer, [question], candidates, device="cpu")
    decoded = choose(candidates[0], decode, answer_type)
    return Answer(decoded.answer, decoded.candidates[decoded.chosen].rationale, decoded.candidates, decoded.chosen)
