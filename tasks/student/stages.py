"""One arm of the paper: stage 1 on self-evaluations (if the arm has them), then stage 2 from it.

With train.self_eval_replay > 0, stage 2 also keeps training on a share of stage-1 rows, so the
final student can both answer (`predict:` / `explain:` a question) and judge (`judge:` /
`critique:` a judged input), which self-verifying decoding (tasks.student.decoding) relies on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tasks.config import ArmConfig, EvalConfig, StudentConfig, TrainConfig
from tasks.data.trainsets import canonical_order
from tasks.student.evaluation import verdict_accuracy
from tasks.student.model import build_student, load_student
from tasks.student.training import TrainResult, train_student


class Row(NamedTuple):
    """A training row as train_student reads it (storage.queries.TrainingRow has the same fields,
    and is a predict row)."""

    example_id: str
    input: str
    label: str
    rationale: str | None
    task: str = "answer"  # or "judge": a key of tasks.student.prefixes.TASKS


def judging(rows: Sequence) -> list[Row]:
    """Self-evaluation rows as the judge task (their labels are verdicts)."""
    return [Row(getattr(r, "example_id", ""), r.input, r.label, r.rationale, "judge") for r in rows]


@dataclass(frozen=True)
class ArmResult:
    arm: str
    checkpoint: Path  # the student to evaluate: stage 2's best checkpoint
    stage1: TrainResult | None  # on self-evaluations; None when the arm has no self-evaluation stage
    stage2: TrainResult
    replayed: int = 0  # stage-1 rows mixed into stage 2


def replay_rows(self_eval_rows: Sequence, train_rows: int, share: float, seed: int) -> list:
    """Self-evaluation rows to add to `train_rows` stage-2 rows so they make up `share` of stage 2.

    share s of the mixed set means r / (n + r) = s, so r = round(s * n / (1 - s)); rows are drawn
    in a seeded shuffled order of their content (the order the store gives them in can change
    between runs: a teacher's n samples come back in any order) and repeat only once every stage-1
    row has been drawn.
    """
    if share <= 0 or not self_eval_rows or not train_rows:
        return []
    wanted = round(share * train_rows / (1 - share))
    order = canonical_order(self_eval_rows)
    random.Random(f"replay:{seed}").shuffle(order)
    return [order[i % len(order)] for i in range(wanted)]


def train_arm(
    arm: ArmConfig,
    *,
    train_rows: Sequence,
    validation_rows: Sequence,
    self_eval_rows: Sequence = (),
    self_eval_validation: Sequence = (),
    train_cfg: TrainConfig,
    student_cfg: StudentConfig,
    out_dir: str | Path,
    accuracy_fn: Callable[[list[str], list[str]], float],
    eval_cfg: EvalConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> ArmResult:
    """Train one arm: stage 1 on self-evaluations (if arm.self_eval), then stage 2 continuing from it.

    `train_rows` are CoT rows (mode "cot") or label rows (mode "standard", whose rationales are
    ignored); `validation_rows` carry gold labels and pick stage 2's checkpoint. Stage 1 picks its
    checkpoint on `self_eval_validation` by verdict agreement, or takes its last one without them.
    `on_checkpoint(path)` follows each checkpoint saved (tasks.student.training.train_student).
    """
    out_dir = Path(out_dir)
    self_eval_rows, self_eval_validation = judging(self_eval_rows), judging(self_eval_validation)
    if arm.mode == "standard":
        train_rows = [Row(getattr(r, "example_id", ""), r.input, r.label, None) for r in train_rows]
    stage1_wanted = arm.self_eval and train_cfg.stage1_steps > 0
    if stage1_wanted and not self_eval_rows:
        raise ValueError(
            f"arm {arm.name!r} has self_eval: true but there are no self-evaluation rows to train on"
        )
    vocab = [text for r in [*self_eval_rows, *train_rows] for text in (r.input, r.label, r.rationale or "")]
    model, tokenizer = build_student(student_cfg, vocab, seed=train_cfg.seed)
    common = {"train_cfg": train_cfg, "student_cfg": student_cfg, "eval_cfg": eval_cfg, "resume": resume,
              "progress": progress, "on_checkpoint": on_checkpoint}
    stage1 = None
    if stage1_wanted:
        stage1 = train_student(
            self_eval_rows, self_eval_validation, model=model, tokenizer=tokenizer, steps=train_cfg.stage1_steps,
            out_dir=out_dir / "stage1", accuracy_fn=verdict_accuracy,
            provenance={"arm": arm.model_dump(), "stage": "self_eval", "init_from": student_cfg.model}, **common,
        )
        model, tokenizer = load_student(stage1.checkpoint)
    replayed = replay_rows(self_eval_rows, len(train_rows), train_cfg.self_eval_replay, train_cfg.seed) \
        if arm.self_eval else []
    provenance = {"arm": arm.model_dump(), "stage": arm.mode,
                  "init_from": str(stage1.checkpoint) if stage1 else student_cfg.model,
                  "self_eval_replayed": len(replayed)}
    stage2 = train_student(
        [*train_rows, *replayed], validation_rows, model=model, tokenizer=tokenizer, steps=train_cfg.stage2_steps,
        out_dir=out_dir / "stage2", accuracy_fn=accuracy_fn, provenance=provenance, **common,
    )
    return ArmResult(arm=arm.name, checkpoint=stage2.checkpoint, stage1=stage1, stage2=stage2,
                     replayed=len(replayed))
