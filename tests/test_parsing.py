"""Parsing teacher outputs: a table of messy outputs and what each must give."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from simulator.answers import GLUED_JUNK, simulate_cot, simulate_evaluation
from tasks.answers import answers_match
from tasks.teacher.parsing import parse_cot, parse_evaluation

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CQA_QUESTION = (
    "Where would you keep a spare blanket?\nAnswer Choices:\n(a) closet\n(b) oven\n(c) Mailbox\n(d) river\n"
    "(e) highway"
)

# (answer type, output, finish reason, expected answer, expected rationale or error fragment)
COT_CASES = [
    pytest.param("equation", "12 + 5 = 17. The answer is (12 + 5).", "stop", "(12 + 5)",
                 "12 + 5 = 17. The answer is (12 + 5).", id="clean-equation"),
    pytest.param("equation", "So 84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are 15 trees.\nA: The answer is (",
                 "length", "(84 / 2)", "So 84 / 2 = 42. The answer is (84 / 2).", id="rambles-into-new-Q"),
    pytest.param("equation", "He had 3.5 kg and 2 more. The answer is (3.5 + 2).", None, "(3.5 + 2)",
                 "He had 3.5 kg and 2 more. The answer is (3.5 + 2).", id="decimal-not-a-sentence-end"),
    pytest.param("equation", "The answer is 17 + 15 + 2 = 34.", None, "17 + 15 + 2", None, id="expression-then-value"),
    pytest.param("equation", "The answer is x = 84 / 2.", None, "84 / 2", None, id="variable-then-expression"),
    pytest.param("equation", "The answer is 42 apples.", None, "42", None, id="number-with-unit"),
    pytest.param("equation", "The answer is $1,250.", None, "1250", None, id="currency-and-thousands"),
    pytest.param("equation", "The final answer is: (6 × 7)", "stop", "(6 × 7)", None, id="unicode-times-no-period"),
    pytest.param("equation", "The answer is (some - 551).", None, None, "not an arithmetic expression",
                 id="words-inside-expression"),
    pytest.param("equation", "The answer is (120 /", "length", None, "truncated (length) inside the answer sentence",
                 id="truncated-inside-answer"),
    pytest.param("equation", "Tom has 12 marbles. He finds 5 more so he has", "length", None,
                 "truncated at max_tokens before", id="truncated-before-answer"),
    pytest.param("equation", "Tom has 12 marbles. He finds 5 more.", "stop", None, "no 'The answer is' sentence",
                 id="missing-answer"),
    pytest.param("equation", "", "content_filter", None, "refused by the content filter", id="refused-empty"),
    pytest.param("equation", "I can't help with that.", "content_filter", None, "refused by the content filter",
                 id="refused-with-text"),
    pytest.param("equation", "   ", "stop", None, "empty output", id="blank"),
    pytest.param("choice", "Blankets are stored indoors. So the answer is (a) closet.", "stop", "closet", None,
                 id="choice-with-letter"),
    pytest.param("choice", "So the answer is (c) mailbox.", "stop", "Mailbox", None, id="choice-canonicalised"),
    pytest.param("choice", "So the answer is (a).", "stop", "closet", None, id="letter-only-mapped"),
    pytest.param("choice", "So the answer is either (a) closet or (d) river.", "stop", None,
                 "names more than one choice", id="two-choices"),
    pytest.param("nli", "So the answer is neutral.\n\nPremise: A man.\nHypothesis: A dog.\nAnswer: So the answer is",
                 "length", "neutral", "So the answer is neutral.", id="rambles-into-new-premise"),
    pytest.param("nli", "He was 71. The answer is 71. So the answer is entailment.", None, "entailment",
                 "He was 71. The answer is 71. So the answer is entailment.", id="first-parseable-sentence"),
    pytest.param("nli", "So the answer is 'contradiction'.", None, "contradiction", None, id="quoted-label"),
    pytest.param("nli", "So the answer is entailment or neutral.", None, None, "more than one label",
                 id="two-labels"),
    pytest.param("number", "45 + 27 = 72. The answer is 72.", "stop", "72", None, id="number"),
    pytest.param("number", "The answer is 5 + 3 = 8 apples.", "stop", "8", None, id="number-after-equals"),
    pytest.param("text", "France's capital is Paris. The answer is Paris.", "stop", "Paris", None, id="text"),
    # Recorded from Gemma 3 270M behind llama.cpp: junk of another script glued onto the answer.
    pytest.param("equation", "He buys 8 boxes of 35. The answer is (8 * 35).で購入", "length", "(8 * 35)",
                 "He buys 8 boxes of 35. The answer is (8 * 35).", id="gemma-junk-after-period"),
    pytest.param("equation", "The answer is (8 * 35)で購入する。", "stop", "(8 * 35)", "The answer is (8 * 35)",
                 id="junk-without-period"),
    pytest.param("equation", "The answer is (120 / 4) 😀😀😀", "length", "(120 / 4)", None, id="emoji-junk"),
    pytest.param("number", "The answer is 280元です", "stop", "280", None, id="number-then-junk"),
    pytest.param("choice", "So the answer is (a) closetです。", "stop", "closet", None, id="choice-then-junk"),
    pytest.param("nli", "So the answer is neutralです", "length", "neutral", None, id="label-then-junk"),
    pytest.param("text", "The answer is Café au lait.", "stop", "Café au lait", None, id="latin-accents-not-junk"),
    pytest.param("equation", "The answer is 購入", "stop", None, "the answer sentence is empty", id="only-junk"),
    pytest.param("equation", "Tom has 12 marbles.\n\nQ: There are 15 trees. How many?\nA: 15 trees", "length", None,
                 "no 'The answer is' sentence before the output went on with a new question",
                 id="continued-without-answer-is-not-truncation"),
]


@pytest.mark.parametrize("answer_type, text, finish, answer, detail", COT_CASES)
def test_parse_cot_table(answer_type, text, finish, answer, detail):
    question = CQA_QUESTION if answer_type == "choice" else None
    parsed = parse_cot(text, answer_type, finish, question=question)
    assert parsed.answer == answer
    if answer is None:
        assert parsed.rationale is None
        assert detail in parsed.error
    else:
        assert parsed.error is None
        if detail is not None:
            assert parsed.rationale == detail


def test_letter_only_answer_without_the_question_is_an_error():
    parsed = parse_cot("So the answer is (b).", "choice")
    assert parsed.answer is None and "only a letter" in parsed.error


def test_unknown_answer_type_fails_loudly():
    with pytest.raises(ValueError, match="unknown answer type"):
        parse_cot("The answer is 3.", "boolean")


def _dss_cases():
    data = json.loads((FIXTURES / "teacher_dss_outputs.json").read_text(encoding="utf-8"))
    return [pytest.param(case, id=f"{case['source']}-{case['answer']}") for case in data["cases"]]


@pytest.mark.parametrize("case", _dss_cases())
def test_parse_cot_on_recorded_palm_outputs(case):
    parsed = parse_cot(case["text"], case["answer_type"], case["finish_reason"], question=case["question"])
    assert parsed.answer == case["answer"]
    if case["error"]:
        assert case["error"] in parsed.error
    else:
        assert parsed.error is None
        assert not parsed.rationale.endswith(("Q:", "Premise:")) and "\nQ:" not in parsed.rationale


def test_svamp_palm_rationales_score_like_the_paper_reports():
    """The released PaLM CoTs for SVAMP train are right on ~74% of rows when scored by value."""
    train = SHARED_DATA / "svamp" / "svamp_train.json"
    if not train.is_file():
        pytest.skip("the shared datasets folder (../shared/data beside the repository) is not present")
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for index in (0, 1):
        texts += json.loads((SHARED_DATA / "svamp" / "llm" / f"train_CoT_{index}.json").read_text(encoding="utf-8"))
    parsed = [parse_cot(text, "equation") for text in texts]
    right = sum(answers_match("equation", p.answer, row["label"]) for p, row in zip(parsed, rows))
    unparseable = sum(p.error is not None for p in parsed)
    assert len(texts) == len(rows) == 800
    assert 0.70 <= right / len(rows) <= 0.80
    assert unparseable < 0.05 * len(rows)


EVAL_CASES = [
    pytest.param("12 + 5 = 17 as proposed.\nEvaluation result: the given answer is correct", "stop", "correct",
                 "12 + 5 = 17 as proposed.", id="clean"),
    pytest.param("Evaluation:\n\nIt adds the marbles.\n\nEvaluation result: the given answer is correct.", None,
                 "correct", "It adds the marbles.", id="mind's-mirror-sample-layout"),
    pytest.param("It subtracts instead.\nEvaluation result: The given answer is incorrect.", "stop", "wrong",
                 "It subtracts instead.", id="incorrect-means-wrong"),
    pytest.param("Not enough information.\nEvaluation Result: the given answer is **uncertain**", "stop", "uncertain",
                 "Not enough information.", id="markdown-bold"),
    pytest.param("It is wrong.\nEvaluation result: the given answer is wrong\n\nQ: Next question\nProposed answer: "
                 "x\nEvaluation result: the given answer is correct", "length", "wrong", "It is wrong.",
                 id="rambles-into-new-Q"),
    pytest.param("The steps check out, so the given answer is correct.", "stop", "correct", "", id="no-result-line"),
    pytest.param("The steps check out.\nEvaluation result: the given answer is", "length", None,
                 "truncated at max_tokens before", id="truncated"),
    pytest.param("The steps look fine to me.", "stop", None, "no 'Evaluation result' verdict", id="no-verdict"),
    pytest.param("", "content_filter", None, "refused by the content filter", id="refused"),
    # Recorded from Gemma 3 270M behind llama.cpp (16 of 25 rejects were this one).
    pytest.param("The answer is right.\nEvaluation result: the given answer is correctにある", "length", "correct",
                 "The answer is right.", id="gemma-junk-after-verdict"),
    pytest.param("It adds.\nEvaluation result: the given answer is wrong。次の問題", "stop", "wrong", "It adds.",
                 id="wrong-then-junk"),
    pytest.param("So the given answer is correctにある", "stop", "correct", "", id="phrase-then-junk"),
    pytest.param("It checks out.\nEvaluation result: the given answer is correctly computed", "stop", None,
                 "gives no verdict", id="correctly-is-not-a-verdict"),
    pytest.param("It is 280.\nEvaluation result: the given answer is 280.\nThe problem says", "length", None,
                 "the 'Evaluation result' line 'the given answer is 280.' gives no verdict",
                 id="unreadable-verdict-is-not-truncation"),
    pytest.param("Fine.\n\nQ: Next one\nEvaluation result: the given answer is correct", "length", None,
                 "before the output went on with a new question", id="verdict-only-in-own-new-question"),
]


@pytest.mark.parametrize("text, finish, verdict, detail", EVAL_CASES)
def test_parse_evaluation_table(text, finish, verdict, detail):
    parsed = parse_evaluation(text, finish)
    assert parsed.verdict == verdict
    if verdict is None:
        assert parsed.rationale is None and detail in parsed.error
    else:
        assert parsed.error is None and parsed.rationale == detail


@pytest.mark.parametrize(
    "answer_type, predicted, gold, expected",
    [
        ("equation", "(84 / 2)", "( 84.0 / 2.0 )", True),
        ("equation", "42", "( 84.0 / 2.0 )", True),
        ("equation", "(84 - 2)", "( 84.0 / 2.0 )", False),
        ("equation", "forty-two", "( 84.0 / 2.0 )", False),
        ("equation", None, "( 84.0 / 2.0 )", False),
        ("number", "1,000", "1000.0", True),
        ("number", "7", "8", False),
        ("choice", "(d) Math Problem", "math problem", True),
        ("choice", "the math problem.", "math problem", True),
        ("choice", "gravity", "math problem", False),
        ("nli", "Entailment", "entailment", True),
        ("nli", "neutral", "entailment", False),
        ("text", "The Eiffel Tower!", "eiffel tower", True),
        ("text", "", "", False),
    ],
)
def test_answers_match(answer_type, predicted, gold, expected):
    assert answers_match(answer_type, predicted, gold) is expected


@pytest.mark.parametrize("answer_type", ["equation", "choice", "nli", "number", "text"])
def test_junk_glued_on_by_the_simulator_keeps_every_answer_and_verdict(answer_type):
    """The simulator's "junk glued after the answer/verdict" deviation, read back like clean output."""
    question, gold = {
        "equation": ("Tom has 12 marbles and finds 5 more. How many does he have?", "( 12.0 + 5.0 )"),
        "choice": (CQA_QUESTION, "closet"),
        "nli": ("Premise: The bridge opened in 1932.\nHypothesis: The bridge is old.", "entailment"),
        "number": ("How many legs do 3 cats have?", "12"),
        "text": ("What is the capital of France?", "Paris"),
    }[answer_type]
    rng = random.Random(0)
    glued = 0
    for wrong in (False, True) * 10:
        cot = simulate_cot(question, gold, answer_type, wrong, rng, junk_rate=0.5)
        parsed = parse_cot(cot, answer_type, "length", question=question)
        assert parsed.error is None, cot
        assert answers_match(answer_type, parsed.answer, gold) is not wrong, cot
        evaluation = simulate_evaluation(question, gold, cot, answer_type, rng, 0.0, 0.0, junk_rate=0.5)
        judged = parse_evaluation(evaluation, "length")
        assert judged.verdict == ("wrong" if wrong else "correct"), evaluation
        glued += any(junk in cot for junk in GLUED_JUNK)
        glued += any(junk in evaluation for junk in GLUED_JUNK)
    assert glued >= 10, "about half the outputs should carry junk"
