"""Score one trained arm on test (greedy and each sampling decode mode), on validation, and its
self-evaluation agreement; scores go to the `predictions` and `results` tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage import PredictionRow, ResultRow, Store
from tasks.answers import answers_match
from tasks.config import ArmConfig, Config
from tasks.data.datasets import answer_type as answer_type_of
from tasks.data.trainsets import data_snapshots, read_scored_rows, rows_state
from tasks.student import freshness
from tasks.student.arms import arm_folder, find_arm, seeded_name, trained_checkpoints
from tasks.student.decoding import (
    SAMPLING_MODES,
    choose,
    judge_candidates,
    passes_per_question,
    sample_candidates,
)
from tasks.student.devices import limit_cpu_threads, resolve_device, use_bf16
from tasks.student.evaluation import evaluate_student
from tasks.student.folders import ArmFolder
from tasks.student.model import load_student


@dataclass(frozen=True)
class ScoredRows:
    """The rows an arm is scored on, read from the store once."""

    test: list
    validation: list
    judged: list  # every judged CoT of the validation examples, which no arm trains on

    def by_name(self) -> dict[str, list]:
        return {"test": self.test, "validation": self.validation, "judged": self.judged}


def _scored_rows(config: Config, store: Store) -> ScoredRows:
    return ScoredRows(**read_scored_rows(config, store))


def evaluate_one(config: Config, name: str, progress: bool = False, force: bool = False,
                 seed: int | None = None) -> dict[str, float] | None:
    """Score the best checkpoint of an arm's run with `seed` (None: train.seed; scored under
    tasks.student.arms.seeded_name) on test (greedy, and each sampling mode of evaluate.decode),
    and for arms with self_eval the self-evaluation agreement of their stage-1 checkpoint (and of
    the final student when stage 2 replayed self-evaluations: without replay it answers a judged
    input with an answer, not a verdict). None: skipped, the arm's scores in the store were made
    from the same inputs (unless `force`)."""
    store = Store(config.store.path)
    arm = find_arm(config, name)
    folder = arm_folder(config, name, seed)
    name = seeded_name(config, name, seed)
    folder.pull_record(freshness.TRAINED)
    checkpoints = trained_checkpoints(folder.local, name)
    folder.pull_record(freshness.EVALUATED)
    rows, inputs = _rows_unless_current(config, store, folder, name, checkpoints, force)
    if rows is None:
        return None
    checkpoint, self_eval_checkpoint = (folder.pull_checkpoint(path) if path else None for path in checkpoints)
    limit_cpu_threads()
    device = resolve_device(config.train.device)
    options = dict(device=device, max_input_length=config.student.max_input_length,
                   bf16=use_bf16(config.train.bf16, device), progress=progress)
    model, tokenizer = _load(checkpoint, device)
    scorer = _Scorer(config, name, folder.public(checkpoint), options)
    results = scorer.test(store, model, tokenizer, rows.test)
    results += scorer.sampled(model, tokenizer, rows.test)
    results += scorer.validation(model, tokenizer, rows.validation)
    # Agreement with the teacher's verdicts, on judged CoTs of examples the student never trained on.
    for metric, judge_checkpoint in _judges(config, arm, checkpoint, self_eval_checkpoint):
        if rows.judged and judge_checkpoint is not None:
            results.append(scorer.agreement(metric, judge_checkpoint, folder.public(judge_checkpoint), rows.judged))
    store.append(results)
    freshness.record_evaluation(folder.local, inputs, results)
    folder.push_record(freshness.EVALUATED)
    return {f"{result.split}:{result.metric}": result.value for result in results}


def _rows_unless_current(config: Config, store: Store, folder: ArmFolder, name: str, checkpoints,
                         force: bool) -> tuple[ScoredRows | None, str]:
    """The rows to score and the evaluation inputs id to record; no rows when the arm's scores are
    current. While the store's parts are as they were when the rows were last read, their
    remembered snapshot ids decide that without reading a row."""

    def inputs_of(scored: dict) -> str:
        return freshness.evaluation_inputs(config, freshness.read_record(folder.local, freshness.TRAINED) or {},
                                           [folder.identity(path) for path in checkpoints], scored)

    state = rows_state(config, store, None)
    if not force and (scored := state.recall(store)) and freshness.evaluated_is_current(
            store, folder.local, name, (inputs := inputs_of(scored))):
        return None, inputs
    rows = _scored_rows(config, store)
    scored = data_snapshots(rows.by_name())
    state.remember(store, scored)
    inputs = inputs_of(scored)
    if not force and freshness.evaluated_is_current(store, folder.local, name, inputs):
        return None, inputs
    return rows, inputs


def _load(checkpoint: Path, device):
    model, tokenizer = load_student(checkpoint)
    model.to(device)
    return model, tokenizer


def _judges(config: Config, arm: ArmConfig, checkpoint: Path, self_eval_checkpoint: Path | None):
    judges = [("self_eval_agreement", self_eval_checkpoint)]
    if arm.self_eval and config.train.self_eval_replay > 0:
        judges.append(("self_eval_agreement_final", checkpoint))
    return judges


@dataclass(frozen=True)
class _Scorer:
    """One arm's scores, each a ResultRow naming the checkpoint it was measured on."""

    config: Config
    arm: str
    checkpoint: str
    options: dict

    @property
    def kind(self) -> str:
        return answer_type_of(self.config.dataset)

    def _result(self, split: str, metric: str, value: float, n: int, checkpoint: str | None = None) -> ResultRow:
        return ResultRow(arm=self.arm, split=split, metric=metric, value=value, n=n,
                         checkpoint=checkpoint or self.checkpoint)

    def test(self, store: Store, model, tokenizer, rows) -> list[ResultRow]:
        """Greedy test accuracy; every prediction and rationale goes to the `predictions` table."""
        scored = evaluate_student(model, tokenizer, rows, self.kind, self.config.evaluate, explain=True,
                                  **self.options)
        store.append([
            PredictionRow(arm=self.arm, split="test", example_id=row.example_id, prediction=prediction,
                          rationale=rationale, label=row.label, correct=correct, checkpoint=self.checkpoint)
            for row, prediction, rationale, correct in zip(
                rows, scored.predictions, scored.rationales, scored.correct)
        ])
        return [self._result("test", "accuracy", scored.accuracy, scored.n)]

    def sampled(self, model, tokenizer, rows) -> list[ResultRow]:
        """Test accuracy and passes per question of each sampling mode in evaluate.decode (greedy is
        always scored); the modes share one set of seeded candidates."""
        evaluate = self.config.evaluate
        modes = [mode for mode in evaluate.decode if mode in SAMPLING_MODES]
        if not modes or not rows:
            return []
        questions = [row.input for row in rows]
        candidates = sample_candidates(model, tokenizer, questions, self.kind, evaluate, **self.options)
        if "self_verify" in modes:
            judging = {key: self.options[key] for key in ("device", "max_input_length", "bf16")}
            candidates = judge_candidates(model, tokenizer, questions, candidates, evaluate.batch_size, **judging)
        results = []
        for mode in modes:
            hits = sum(answers_match(self.kind, choose(row, mode, self.kind).answer, gold.label)
                       for row, gold in zip(candidates, rows))
            results.append(self._result("test", f"accuracy:{mode}", hits / len(rows), len(rows)))
            results.append(self._result("test", f"passes:{mode}",
                                        float(passes_per_question(mode, evaluate.samples)), len(rows)))
        return results

    def validation(self, model, tokenizer, rows) -> list[ResultRow]:
        if not rows:
            return []
        checked = evaluate_student(model, tokenizer, rows, self.kind, self.config.evaluate, **self.options)
        return [self._result("validation", "accuracy", checked.accuracy, checked.n)]

    def agreement(self, metric: str, checkpoint: Path, name: str, judged) -> ResultRow:
        """Verdict agreement with the teacher of the student saved at `checkpoint` (recorded as `name`)."""
        judge, tokenizer = _load(checkpoint, self.options["device"])
        agreement = evaluate_student(judge, tokenizer, judged, "verdict", self.config.evaluate, **self.options)
        return self._result("validation", metric, agreement.accuracy, agreement.n, name)
