"""Decoding with k candidates: seeded sampling, majority vote, and the student judging its own candidates."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from flows.cli import main
from tasks.answers import answers_match
from tasks.config import ConfigError, EvalConfig, StudentConfig, TinyStudentConfig, TrainConfig, parse_config
from tasks.student.batching import encode
from tasks.student.decoding import (
    Candidate,
    candidate_answer,
    choose,
    judge,
    judge_candidates,
    passes_per_question,
    sample_candidates,
)
from tasks.student.evaluation import generate, is_verdict
from tasks.student.model import build_student, load_student
from tasks.student.stages import Row, judging, replay_rows
from tasks.student.training import train_student
from tasks.teacher.prompts import format_judged_input

QUESTIONS = [f"Ann has {a} pens and buys {b} more.\nHow many pens now?" for a, b in ((2, 3), (4, 1), (6, 2))]
COTS = [Row(f"q{i}", q, f"( {a}.0 + {b}.0 )", f"{a} + {b} = {a + b}. The answer is ({a} + {b}).")
        for i, (q, (a, b)) in enumerate(zip(QUESTIONS, ((2, 3), (4, 1), (6, 2))))]
WRONG = {0: "2 * 3 = 6. The answer is (2 * 3).", 1: "4 - 1 = 3. The answer is (4 - 1).",
         2: "6 - 2 = 4. The answer is (6 - 2)."}
JUDGED = judging(
    [Row(c.example_id, format_judged_input(c.input, c.rationale), "correct", "It adds up.") for c in COTS]
    + [Row(c.example_id, format_judged_input(c.input, WRONG[i]), "wrong", "It should add.") for i, c in enumerate(COTS)]
)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny student that has memorised the CoTs and, mixed in as a replay would, the verdicts."""
    cfg = StudentConfig(tiny=TinyStudentConfig(d_model=64, d_ff=128, num_layers=2, num_heads=2, vocab_size=400))
    rows = COTS + JUDGED
    model, tokenizer = build_student(cfg, [t for r in rows for t in (r.input, r.label, r.rationale)])
    result = train_student(
        rows, [], model=model, tokenizer=tokenizer, student_cfg=cfg, steps=200,
        train_cfg=TrainConfig(batch_size=9, learning_rate=3e-3, stage1_steps=0, stage2_steps=200, eval_every=200),
        out_dir=tmp_path_factory.mktemp("student"), accuracy_fn=lambda preds, golds: 0.0, progress=False,
    )
    return result.checkpoint, *load_student(result.checkpoint)


def test_sampling_is_seeded_and_deterministic(student):
    _, model, tokenizer = student
    options = dict(batch_size=4, max_new_tokens=12, samples=4, temperature=2.0)
    first = generate(model, tokenizer, QUESTIONS, seed=7, **options)
    assert [len(texts) for texts in first] == [4, 4, 4]
    assert generate(model, tokenizer, QUESTIONS, seed=7, **options) == first
    assert generate(model, tokenizer, QUESTIONS, seed=8, **options) != first
    cfg = EvalConfig(batch_size=4, max_new_tokens=24, samples=3, temperature=0.5, seed=1)
    assert sample_candidates(model, tokenizer, QUESTIONS, "equation", cfg) == \
        sample_candidates(model, tokenizer, QUESTIONS, "equation", cfg)


def test_the_student_judges_its_stage_1_inputs_with_the_verdicts_it_learned(student):
    _, model, tokenizer = student
    verdicts = judge(model, tokenizer, [row.input for row in JUDGED], batch_size=4)
    assert [verdict for verdict, _ in verdicts] == [row.label for row in JUDGED]
    assert all(score > 0.5 for _, score in verdicts[:3]) and all(score < 0.5 for _, score in verdicts[3:])


def test_candidates_answer_with_their_rationale_and_carry_verdicts(student):
    _, model, tokenizer = student
    cfg = EvalConfig(batch_size=8, max_new_tokens=24, samples=3, temperature=0.3)
    candidates = sample_candidates(model, tokenizer, QUESTIONS, "equation", cfg)
    judged = judge_candidates(model, tokenizer, QUESTIONS, candidates, batch_size=8)
    assert [[c.answer for c in row] for row in judged] == [[c.answer for c in row] for row in candidates]
    assert all(c.verdict in ("correct", "wrong", "uncertain") and 0 <= c.score <= 1 for row in judged for c in row)
    first = judged[0][0]
    assert first.rationale.startswith("2 + 3") and first.answer == "(2 + 3)"


def test_self_consistency_takes_the_majority_answer_counting_equal_values_as_one():
    candidates = [Candidate("r1", "(2 * 3)"), Candidate("r2", "(2 + 3)"), Candidate("r3", "(3 + 2)")]
    decided = choose(candidates, "self_consistency", "equation")
    assert decided.answer == "(2 + 3)" and decided.chosen == 1
    # A tie goes to the answer seen first.
    assert choose(candidates[:2], "self_consistency", "equation").chosen == 0


def test_self_verify_takes_the_best_verdict_and_breaks_ties_by_majority_vote():
    best_alone = [Candidate("a", "(2 + 3)", "wrong", 0.2), Candidate("b", "(3 + 2)", "wrong", 0.3),
                  Candidate("c", "(2 * 3)", "correct", 0.9)]
    assert choose(best_alone, "self_verify", "equation").answer == "(2 * 3)"
    assert choose(best_alone, "self_consistency", "equation").answer == "(2 + 3)"
    tied = [Candidate("a", "(2 * 3)", "correct", 0.9), Candidate("b", "(2 + 3)", "correct", 0.9),
            Candidate("c", "(3 + 2)", "wrong", 0.1)]
    assert choose(tied, "self_verify", "equation").chosen == 1  # its answer has two votes
    with pytest.raises(ValueError, match="judge_candidates"):
        choose([Candidate("a", "(2 + 3)")], "self_verify", "equation")


def test_judging_is_its_own_task_so_answering_never_learns_verdicts(student):
    _, model, tokenizer = student
    data = encode([COTS[0], JUDGED[0]], tokenizer, StudentConfig(), explain=True)
    asked = [tokenizer.decode(ids, skip_special_tokens=True) for ids in data.predict_inputs + data.explain_inputs]
    assert [text.split(" Q:")[0].split(" Ann")[0] for text in asked] == ["predict:", "judge:", "explain:", "critique:"]
    # Trained on both, the student answers a question with an answer, and judges a judged input.
    answers = [texts[0] for texts in generate(model, tokenizer, QUESTIONS, max_new_tokens=12)]
    assert not any(is_verdict(answer) for answer in answers)
    assert [answers_match("equation", answer, row.label) for answer, row in zip(answers, COTS)] == [True] * 3


def test_a_verdict_word_is_never_an_answer_candidate():
    assert candidate_answer("correct", "(2 + 3)") == "(2 + 3)"
    assert candidate_answer(None, "answer: correct") == "" and candidate_answer("Wrong.", "") == ""
    assert candidate_answer("(2 + 3)", "correct") == "(2 + 3)"
    # Candidates left without an answer do not outvote one that has an answer.
    unanswered = [Candidate("r1", ""), Candidate("r2", ""), Candidate("r3", "(2 + 3)")]
    assert choose(unanswered, "self_consistency", "equation").answer == "(2 + 3)"
    judged = [Candidate("r1", "", "correct", 0.9), Candidate("r2", "(2 + 3)", "wrong", 0.4)]
    assert choose(judged, "self_verify", "equation").answer == "(2 + 3)"


def test_inference_cost_per_question_of_each_mode():
    assert [passes_per_question(mode, 5) for mode in ("greedy", "self_consistency", "self_verify")] == [1, 10, 15]


def test_replay_makes_stage_1_rows_the_asked_share_of_stage_2():
    replayed = replay_rows(JUDGED, train_rows=80, share=0.2, seed=0)
    assert len(replayed) == 20  # 20 / (80 + 20) = 0.2
    assert set(replayed) == set(JUDGED)  # every stage-1 row is drawn before any repeats
    assert replay_rows(JUDGED, 80, 0.2, 0) == replayed
    assert replay_rows(JUDGED, 80, 0.0, 0) == []


def test_replay_draws_the_same_rows_whatever_order_the_store_gives_them_in():
    many = [Row(f"e{i}", f"question {i} with a chain of thought", verdict, None, "judge")
            for i in range(40) for verdict in ("correct", "wrong")]
    assert replay_rows(many, train_rows=40, share=0.2, seed=0) == replay_rows(many[::-1], 40, 0.2, 0)


def test_predict_command_shows_candidates_and_verdicts(student, capsys):
    checkpoint, *_ = student
    code = main(["predict", str(checkpoint), QUESTIONS[0], "--decode", "self_verify", "--samples", "3",
                 "--temperature", "0.3", "--answer-type", "equation"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("candidate ") == 3 and out.count("verdict ") == 3 and out.count("* candidate") == 1
    assert "answer: (2 + 3)" in out


def test_decode_takes_one_mode_or_a_list_and_refuses_a_repeat():
    assert parse_config({"evaluate": {"decode": "self_verify"}}).evaluate.decode == ["self_verify"]
    with pytest.raises(ConfigError, match="lists a mode twice"):
        parse_config({"evaluate": {"decode": ["greedy", "greedy"]}})
