"""Scoring a student: batched greedy predictions, label accuracy, self-evaluation agreement."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tasks.config import EvalConfig, StudentConfig, TinyStudentConfig, TrainConfig
from tasks.student.devices import resolve_device, use_bf16
from tasks.student.evaluation import (
    evaluate_student,
    label_accuracy,
    normalise_verdict,
    predict,
    verdict_accuracy,
)
from tasks.student.model import build_student, load_student
from tasks.student.prefixes import EXPLAIN
from tasks.student.stages import Row
from tasks.student.training import train_student

ROWS = [
    Row("a", "Premise: Anna has 3 apples.\nHypothesis: Anna has apples.", "entailment", "It says so."),
    Row(
        "b",
        "Premise: Ben had 12 pens and lost some on the way home.\nHypothesis: Ben lost 5.",
        "neutral",
        "It says nothing about it.",
    ),
    Row("c", "Premise: Carla has 4 boxes.\nHypothesis: Carla has no boxes.", "contradiction", "It says no."),
    Row(
        "d",
        "Premise: Dan shares 20 cookies equally among 4 friends at school.\nHypothesis: Dan shares.",
        "entailment",
        "It says so.",
    ),
    Row(
        "e",
        "Premise: Ella has 9 shells.\nHypothesis: Ella likes shells.",
        "neutral",
        "It says nothing about it.",
    ),
]


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny student trained until it reproduces the labels and rationales of ROWS."""
    cfg = StudentConfig(
        tiny=TinyStudentConfig(d_model=64, d_ff=128, num_layers=2, num_heads=2, vocab_size=400)
    )
    model, tokenizer = build_student(cfg, [t for r in ROWS for t in (r.input, r.label, r.rationale)])
    result = train_student(
        ROWS,
        [],
        model=model,
        tokenizer=tokenizer,
        train_cfg=TrainConfig(
            batch_size=5, learning_rate=3e-3, stage1_steps=0, stage2_steps=100, eval_every=100
        ),
        student_cfg=cfg,
        steps=100,
        out_dir=tmp_path_factory.mktemp("memorised"),
        accuracy_fn=lambda preds, golds: 0.0,
        progress=False,
    )
    return load_student(result.checkpoint)


def test_predict_is_greedy_batched_and_keeps_the_input_order(memorised):
    model, tokenizer = memorised
    inputs = [row.input for row in ROWS]
    one_by_one = predict(model, tokenizer, inputs, batch_size=1, max_new_tokens=16)
    batched = predict(model, tokenizer, inputs, batch_size=3, max_new_tokens=16)
    assert batched == one_by_one == [row.label for row in ROWS]
    assert predict(model, tokenizer, inputs[::-1], batch_size=4, max_new_tokens=16) == batched[::-1]


def test_explain_prefix_generates_the_rationale(memorised):
    model, tokenizer = memorised
    assert predict(model, tokenizer, [ROWS[2].input], prefix=EXPLAIN, max_new_tokens=16) == [
        ROWS[2].rationale
    ]


def test_evaluate_student_scores_labels_and_reports_rationales_and_speed(memorised):
    model, tokenizer = memorised
    # Gold labels written differently (case, punctuation) still match; the last one is another label.
    golds = [
        r._replace(label=g)
        for r, g in zip(ROWS, ["Entailment.", "neutral", " contradiction", "entailment", "contradiction"])
    ]
    scored = evaluate_student(
        model, tokenizer, golds, "nli", EvalConfig(batch_size=2, max_new_tokens=16), explain=True
    )
    assert scored.predictions == tuple(row.label for row in ROWS)
    assert scored.correct == (True, True, True, True, False)
    assert scored.accuracy == pytest.approx(0.8) and scored.n == 5
    assert scored.rationales == tuple(row.rationale for row in ROWS)
    assert scored.examples_per_s > 0


def test_label_accuracy_matches_equations_numerically_and_text_normalised():
    assert label_accuracy(
        ["( 84 / 2 )", "(40 + 2)", "( 1.0 / 0.0 )"], ["( 84.0 / 2.0 )"] * 3, "equation"
    ) == (pytest.approx(2 / 3))
    assert label_accuracy(["Math Problem.", "a book"], ["math problem", "book"], "choice") == 1.0
    assert label_accuracy([], [], "nli") == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        label_accuracy(["a", "b"], ["a"], "text")


def test_self_evaluation_agreement_compares_verdict_words():
    assert normalise_verdict("Correct. The steps add up.") == "correct"
    assert normalise_verdict("maybe") is None
    assert verdict_accuracy(
        ["correct", "wrong, 3 + 4 is 7", "uncertain"], ["correct", "wrong", "correct"]
    ) == (pytest.approx(2 / 3))


def test_device_auto_and_bf16_only_where_supported():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert use_bf16("auto", torch.device("cpu")) is False
    assert use_bf16(False, torch.device("cpu")) is False
    assert use_bf16(True, torch.device("cpu")) is True  # autocast to bf16 works on any CPU, if slowly
    with pytest.raises(ValueError, match="set it to auto or false"):
        use_bf16(True, torch.device("mps"))
