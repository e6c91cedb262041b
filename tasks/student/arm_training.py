"""Train one arm of a config from what the store holds, or skip it when nothing it depends on changed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from storage import Store
from tasks.config import Config
from tasks.data.datasets import answer_type as answer_type_of
from tasks.data.trainsets import rows_state
from tasks.student import freshness
from tasks.student.arms import ArmRows, arm_folder, arm_rows, find_arm, seeded_name, with_seed
from tasks.student.devices import limit_cpu_threads
from tasks.student.evaluation import label_accuracy
from tasks.student.folders import ArmFolder
from tasks.student.stages import ArmResult, train_arm


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
    seconds: float = 0.0  # wall time of both stages' training (0 for a resumed run that had finished)

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
        return f"{line}; {self.examples_per_s:.1f} examples/s, {self.seconds:.0f} s -> {self.checkpoint}"


def train_one(config: Config, name: str, resume: bool = False, progress: bool = True,
              force: bool = False, seed: int | None = None) -> TrainedArm:
    """Train arm `name` with `seed` (None: train.seed), stage 1 on self-evaluations where asked, then
    stage 2, and point trained.json at its best checkpoints; skipped when trained.json records the
    same inputs (unless `force`)."""
    arm = find_arm(config, name)
    limit_cpu_threads()
    store = Store(config.store.path)
    folder = arm_folder(config, name, seed)
    run = seeded_name(config, name, seed)
    config = with_seed(config, seed)
    folder.pull_record(freshness.TRAINED)
    state = rows_state(config, store, arm)
    # Rows read before in this state: their remembered ids tell whether anything changed, unread.
    if not force and (snapshots := state.recall(store)) and (record := freshness.trained_is_current(
            folder.local, freshness.training_inputs(config, arm, snapshots), folder.has_checkpoint)):
        return _trained_from(record, folder, run)
    rows = arm_rows(config, store, arm)
    snapshots = freshness.row_snapshots(rows.training.rows, rows.validation, rows.self_eval_rows, rows.judged)
    state.remember(store, snapshots)
    inputs = freshness.training_inputs(config, arm, snapshots)
    if not force and (record := freshness.trained_is_current(folder.local, inputs, folder.has_checkpoint)):
        return _trained_from(record, folder, run)
    if resume:
        folder.pull_resumable()
    kind = answer_type_of(config.dataset)
    result = train_arm(
        arm,
        train_rows=rows.training.rows,
        validation_rows=rows.validation,
        self_eval_rows=rows.self_eval_rows,
        self_eval_validation=rows.judged,
        train_cfg=config.train,
        student_cfg=config.student,
        eval_cfg=config.evaluate,
        out_dir=folder.local,
        accuracy_fn=lambda predictions, golds: label_accuracy(predictions, golds, kind),
        resume=resume,
        progress=progress,
        on_checkpoint=folder.push_checkpoint,
    )
    trained = _trained(run, rows, result, folder)
    _record(folder, inputs, trained, result)
    return trained


def _trained(name: str, rows: ArmRows, result: ArmResult, folder: ArmFolder) -> TrainedArm:
    return TrainedArm(
        arm=name,
        checkpoint=folder.public(result.checkpoint),
        validation_accuracy=result.stage2.best_accuracy,
        train_rows=len(rows.training.rows),
        excluded_rows=rows.excluded,
        examples_per_s=result.stage2.examples_per_s,
        self_eval_checkpoint=folder.public(result.stage1.checkpoint) if result.stage1 else None,
        validation_rows=len(rows.validation),
        self_eval_agreement=result.stage1.best_accuracy if result.stage1 else None,
        self_eval_validation_rows=len(rows.judged),
        replayed_rows=result.replayed,
        seconds=result.stage2.seconds + (result.stage1.seconds if result.stage1 else 0.0),
    )


def _record(folder: ArmFolder, inputs: str, trained: TrainedArm, result: ArmResult) -> None:
    """trained.json: the pointer evaluation follows, relative so the store can move between machines;
    with a URL store it is uploaded after the checkpoints it names."""
    stage1 = result.stage1
    freshness.write_record(folder.local, freshness.TRAINED, {
        "inputs": inputs,
        **dataclasses.asdict(trained),
        "checkpoint": str(result.checkpoint.relative_to(folder.local)),
        "self_eval_checkpoint": stage1 and str(stage1.checkpoint.relative_to(folder.local)),
    })
    folder.push_record(freshness.TRAINED)


def _trained_from(record: dict, folder: ArmFolder, run: str) -> TrainedArm:
    fields = {f.name for f in dataclasses.fields(TrainedArm)} & set(record)
    arm = TrainedArm(**{key: record[key] for key in fields} | {"arm": run})
    self_eval = record.get("self_eval_checkpoint")
    return dataclasses.replace(arm, checkpoint=folder.public(folder.local / record["checkpoint"]),
                               self_eval_checkpoint=self_eval and folder.public(folder.local / self_eval),
                               unchanged=True)
