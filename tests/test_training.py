"""The student's training: the multi-task loss, batching, the loop, checkpoints and resuming."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tasks.answers import evaluate_equation
from tasks.config import ArmConfig, EvalConfig, StudentConfig, TinyStudentConfig, TrainConfig
from tasks.data.arithmetic import generate_problems
from tasks.student.batching import IGNORE, epoch_batches
from tasks.student.evaluation import evaluate_student, label_accuracy
from tasks.student.model import build_student, load_student
from tasks.student.stages import Row, judging, replay_rows, train_arm
from tasks.student.training import RECORD, data_snapshot, learning_rate, multitask_loss, train_student

SMALL = StudentConfig(
    tiny=TinyStudentConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=300),
    max_input_length=96,
    max_target_length=64,
)
QUICK_EVAL = EvalConfig(batch_size=32, max_new_tokens=16)


def arithmetic_rows(n: int, split: str = "train", seed: int = 0, max_number: int = 99) -> list[Row]:
    """Problems of the built-in generator with a short worked rationale, as training rows."""
    rows = []
    for problem in generate_problems(n, seed, split, max_number):
        expression = problem.equation.replace(".0", "")
        value = f"{evaluate_equation(problem.equation):g}"
        rationale = f"We compute {expression} = {value}. The answer is {value}."
        rows.append(Row(problem.id, problem.question, problem.equation, rationale))
    return rows


def self_eval_rows(rows: list[Row]) -> list[Row]:
    """Judged-CoT rows: every other CoT is marked wrong by a changed answer."""
    judged = []
    for i, row in enumerate(rows):
        cot = row.rationale if i % 2 == 0 else row.rationale.replace("The answer is", "The answer is 1")
        verdict = "correct" if i % 2 == 0 else "wrong"
        judged.append(
            Row(
                row.example_id,
                f"Q: {row.input}\nProposed answer: {cot}",
                verdict,
                f"The answer is {verdict}.",
            )
        )
    return judged


def equation_accuracy(preds: list[str], golds: list[str]) -> float:
    return label_accuracy(preds, golds, "equation")


def small_train(**changes) -> TrainConfig:
    settings = {"batch_size": 8, "learning_rate": 1e-2, "stage1_steps": 0, "stage2_steps": 6, "eval_every": 3}
    return TrainConfig(**{**settings, **changes})


def run(rows, out_dir, validation=(), steps=6, resume=False, on_step=None, train_cfg=None, accuracy=None):
    model, tokenizer = build_student(SMALL, [t for r in rows for t in (r.input, r.label, r.rationale or "")])
    return train_student(
        rows,
        list(validation),
        model=model,
        tokenizer=tokenizer,
        train_cfg=train_cfg or small_train(),
        student_cfg=SMALL,
        steps=steps,
        out_dir=out_dir,
        accuracy_fn=accuracy or equation_accuracy,
        eval_cfg=QUICK_EVAL,
        resume=resume,
        progress=False,
        on_step=on_step,
    )


# --- the loss -------------------------------------------------------------------------------------


def test_multitask_loss_matches_hand_computed_value():
    # Label: one real token with uniform logits over 2 classes (CE = ln 2), one padding token.
    label_logits = torch.zeros(1, 2, 2)
    label_targets = torch.tensor([[0, IGNORE]])
    # Rationale: logits (ln 3, 0) give p = (3/4, 1/4); targets 0 then 1 cost ln(4/3) and ln 4.
    rationale_logits = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
    rationale_targets = torch.tensor([[0, 1]])

    loss = multitask_loss(label_logits, label_targets, rationale_logits, rationale_targets, alpha=0.3)

    expected_rationale = (math.log(4 / 3) + math.log(4)) / 2
    assert loss.label.item() == pytest.approx(math.log(2))
    assert loss.rationale.item() == pytest.approx(expected_rationale)
    assert loss.total.item() == pytest.approx(0.3 * math.log(2) + 0.7 * expected_rationale)


def test_each_task_loss_is_a_mean_over_its_own_tokens_not_the_batch():
    # Two label rows: one token costing ln 2, and three tokens costing ln(4/3) each (+ padding).
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[math.log(3), 0.0]] * 3])
    targets = torch.tensor([[1, IGNORE, IGNORE], [0, 0, 0]])
    loss = multitask_loss(logits, targets)
    assert loss.total.item() == pytest.approx((math.log(2) + 3 * math.log(4 / 3)) / 4)


def test_without_rationale_or_with_padding_only_the_loss_is_the_label_loss():
    label_logits = torch.zeros(2, 3, 5)
    label_targets = torch.tensor([[1, 2, IGNORE], [3, IGNORE, IGNORE]])
    alone = multitask_loss(label_logits, label_targets, alpha=0.5)
    all_padding = multitask_loss(
        label_logits, label_targets, torch.randn(2, 4, 5), torch.full((2, 4), IGNORE), alpha=0.5
    )
    assert alone.total.item() == pytest.approx(math.log(5))
    assert alone.rationale is None and all_padding.rationale is None
    assert all_padding.total.item() == pytest.approx(math.log(5))


def test_alpha_one_ignores_the_rationale():
    torch.manual_seed(0)
    label_logits, rationale_logits = torch.randn(2, 3, 7), torch.randn(2, 4, 7)
    label_targets, rationale_targets = torch.randint(0, 7, (2, 3)), torch.randint(0, 7, (2, 4))
    loss = multitask_loss(label_logits, label_targets, rationale_logits, rationale_targets, alpha=1.0)
    assert loss.total.item() == pytest.approx(loss.label.item())


# --- batching and schedule ------------------------------------------------------------------------


def test_an_epoch_of_batches_covers_every_row_once_with_similar_lengths_per_batch():
    lengths = [(i * 37) % 101 for i in range(400)]
    batches = epoch_batches(lengths, batch_size=16, seed=0, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 16 from 0..100 would spread about 90
    assert epoch_batches(lengths, 16, 0, 0) == batches
    assert epoch_batches(lengths, 16, 0, 1) != batches


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(1.0, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(0.2)  # warmup: 5 steps
    assert max(rates) == pytest.approx(rates[4])
    assert rates[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_data_snapshot_names_the_rows():
    rows = arithmetic_rows(5)
    assert data_snapshot(rows) == data_snapshot(rows[::-1])  # the store's row order does not matter
    assert data_snapshot(rows) != data_snapshot(rows[:4])
    assert data_snapshot(rows) != data_snapshot([rows[0]._replace(rationale=None), *rows[1:]])


# --- the loop -------------------------------------------------------------------------------------


def test_two_stage_training_reduces_both_losses_and_records_provenance(tmp_path):
    rows = arithmetic_rows(48)
    train_cfg = small_train(stage1_steps=25, stage2_steps=25, eval_every=25)
    result = train_arm(
        ArmConfig(name="cot-selfeval", mode="cot", n_cots=1, self_eval=True),
        train_rows=rows,
        validation_rows=arithmetic_rows(8, "test"),
        self_eval_rows=self_eval_rows(rows),
        train_cfg=train_cfg,
        student_cfg=SMALL,
        eval_cfg=QUICK_EVAL,
        out_dir=tmp_path,
        accuracy_fn=equation_accuracy,
        progress=False,
    )

    def early_late(values):
        return sum(values[:3]) / 3, sum(values[-3:]) / 3

    for losses in (result.stage1.losses, result.stage2.losses):
        for part in ("label_loss", "rationale_loss"):
            early, late = early_late([getattr(loss, part) for loss in losses])
            assert late < 0.7 * early, part
    stage1 = json.loads((result.stage1.checkpoint / RECORD).read_text())
    stage2 = json.loads((result.checkpoint / RECORD).read_text())
    assert stage1["stage"] == "self_eval" and stage2["stage"] == "cot"
    assert stage2["init_from"] == str(result.stage1.checkpoint)
    assert stage2["data_snapshot"] == result.stage2.data_snapshot == data_snapshot(rows)
    assert stage2["arm"]["name"] == "cot-selfeval" and stage2["train"]["stage2_steps"] == 25
    assert stage2["student"]["tiny"]["d_model"] == 32
    assert [step for step, _ in result.stage2.validation] == [25]
    assert result.stage1.seconds > 0 and result.stage2.seconds > 0  # how long each stage took
    model, tokenizer = load_student(result.checkpoint)
    assert model.config.d_model == 32 and tokenizer.pad_token_id == 0


def test_self_eval_replay_mixes_stage_1_rows_into_stage_2(tmp_path):
    rows = arithmetic_rows(16)
    judged = self_eval_rows(rows)
    result = train_arm(
        ArmConfig(name="cot-selfeval", mode="cot", n_cots=1, self_eval=True),
        train_rows=rows, validation_rows=[], self_eval_rows=judged,
        train_cfg=small_train(stage1_steps=2, stage2_steps=2, eval_every=2, self_eval_replay=0.2),
        student_cfg=SMALL, eval_cfg=QUICK_EVAL, out_dir=tmp_path, accuracy_fn=equation_accuracy, progress=False,
    )
    stage2 = json.loads((result.checkpoint / RECORD).read_text())
    assert result.replayed == stage2["self_eval_replayed"] == 4  # 4 / (16 + 4) = 0.2
    assert stage2["rows"] == 20 and stage2["data_snapshot"] == data_snapshot([*rows, *replay_rows(judging(judged), 16, 0.2, 0)])


def test_standard_mode_trains_on_labels_only(tmp_path):
    result = train_arm(
        ArmConfig(name="standard", mode="standard"),
        train_rows=arithmetic_rows(16),
        validation_rows=[],
        train_cfg=small_train(stage2_steps=3, eval_every=3),
        student_cfg=SMALL,
        out_dir=tmp_path,
        accuracy_fn=equation_accuracy,
        progress=False,
    )
    assert all(loss.rationale_loss is None for loss in result.stage2.losses)
    assert result.stage1 is None and result.checkpoint == tmp_path / "stage2" / "step-000003"


def test_a_fixed_seed_gives_the_same_loss_curve(tmp_path):
    rows = arithmetic_rows(24)
    first = run(rows, tmp_path / "a", steps=4)
    second = run(rows, tmp_path / "b", steps=4)
    assert first.losses == second.losses


def test_resume_after_a_kill_continues_with_the_losses_of_an_uninterrupted_run(tmp_path):
    rows = arithmetic_rows(24)
    uninterrupted = run(rows, tmp_path / "whole", steps=6)

    def kill_at_step_5(loss):
        if loss.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(rows, tmp_path / "killed", steps=6, on_step=kill_at_step_5)  # last checkpoint: step 3
    resumed = run(rows, tmp_path / "killed", steps=6, resume=True)

    assert resumed.losses == uninterrupted.losses
    assert [p.name for p in sorted((tmp_path / "killed").iterdir())] == ["step-000006"]


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    rows = arithmetic_rows(16)
    finished = run(rows, tmp_path, steps=3)
    written = (finished.latest / "model.safetensors").stat().st_mtime_ns
    again = run(rows, tmp_path, steps=3, resume=True)
    assert again.losses == finished.losses and again.examples_per_s == 0.0
    assert (finished.latest / "model.safetensors").stat().st_mtime_ns == written


def test_resume_refuses_checkpoints_of_other_data(tmp_path):
    run(arithmetic_rows(16), tmp_path, steps=3)
    with pytest.raises(ValueError, match="different data_snapshot"):
        run(arithmetic_rows(17), tmp_path, steps=6, resume=True)


def test_the_best_validation_checkpoint_is_kept_and_chosen(tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    result = run(
        arithmetic_rows(16),
        tmp_path,
        validation=arithmetic_rows(4, "test"),
        steps=6,
        train_cfg=small_train(eval_every=2),
        accuracy=lambda preds, golds: next(scores),
    )
    assert result.best_step == 4 and result.best_accuracy == 0.9
    assert result.checkpoint == tmp_path / "step-000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000006"]
    assert not (result.checkpoint / "trainer_state.pt").exists()  # optimizer state only in the latest
    assert (result.latest / "trainer_state.pt").exists()


@pytest.mark.slow
def test_tiny_student_learns_arithmetic_well_above_the_constant_baseline(tmp_path):
    train = arithmetic_rows(1000, max_number=30)
    test = arithmetic_rows(200, "test", max_number=30)
    result = train_arm(
        ArmConfig(name="standard", mode="standard"),
        train_rows=train[100:],
        validation_rows=train[:100],
        train_cfg=TrainConfig(
            batch_size=32, learning_rate=1e-3, stage1_steps=0, stage2_steps=700, eval_every=350
        ),
        student_cfg=StudentConfig(max_input_length=128, max_target_length=64),
        eval_cfg=EvalConfig(max_new_tokens=24),
        out_dir=tmp_path,
        accuracy_fn=equation_accuracy,
        progress=False,
    )
    model, tokenizer = load_student(result.checkpoint)
    scored = evaluate_student(model, tokenizer, test, "equation", EvalConfig(max_new_tokens=24))
    most_common_value = Counter(evaluate_equation(row.label) for row in train).most_common(1)[0][0]
    constant = sum(evaluate_equation(row.label) == most_common_value for row in test) / len(test)
    assert constant < 0.1
    assert scored.accuracy > 0.5
