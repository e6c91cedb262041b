"""Prompts: the paper's few-shot format, exemplars our own parser reads, a layout the simulator inverts."""

from __future__ import annotations

import hashlib
import json

import pytest

from simulator.requests import read_request
from tasks.teacher.parsing import parse_cot, parse_evaluation
from tasks.teacher.prompts import (
    ANSWER_TYPES,
    PROMPT_VERSIONS,
    cot_messages,
    eval_messages,
    format_judged_input,
    prompt_version,
)

SVAMP_QUESTION = "Luke scored 84 points after playing 2 rounds of a trivia game.\nHow many points did he score per round?"
COT = "Luke scored 84 points in 2 rounds. 84 / 2 = 42. The answer is (84 / 2)."

# The fingerprint of every prompt with placeholder inputs, and the version it was released as.
# If a prompt's text changes, this test fails: bump its version in PROMPT_VERSIONS (stored rows record
# it), then update both values here.
PINNED = {
    ("equation", "cot"): ("equation-cot-1", "ed420bc53c7c"),
    ("equation", "evaluation"): ("equation-evaluation-1", "2b5faa75b8cd"),
    ("choice", "cot"): ("choice-cot-1", "27e7e8576c57"),
    ("choice", "evaluation"): ("choice-evaluation-1", "08d56d9e71a2"),
    ("nli", "cot"): ("nli-cot-1", "b9321c2a3349"),
    ("nli", "evaluation"): ("nli-evaluation-1", "964097ab6311"),
    ("number", "cot"): ("number-cot-1", "1ad1d220e086"),
    ("number", "evaluation"): ("number-evaluation-1", "08555dd62599"),
    ("text", "cot"): ("text-cot-1", "2b4837cd662f"),
    ("text", "evaluation"): ("text-evaluation-1", "91f2116392d2"),
}


def _fingerprint(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize("answer_type, kind", sorted(PINNED))
def test_changed_prompt_text_needs_a_version_bump(answer_type, kind):
    messages = cot_messages(answer_type, "QUESTION") if kind == "cot" else eval_messages(answer_type, "QUESTION", "COT")
    version, fingerprint = PINNED[(answer_type, kind)]
    assert (prompt_version(answer_type, kind), _fingerprint(messages)) == (version, fingerprint), (
        "prompt text changed: bump its version in tasks.teacher.prompts.PROMPT_VERSIONS and update PINNED here"
    )


def test_every_answer_type_and_kind_has_a_version():
    assert set(PROMPT_VERSIONS) == set(PINNED)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        prompt_version("equation", "summary")
    with pytest.raises(ValueError, match="unknown answer type"):
        prompt_version("boolean", "cot")


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_cot_prompt_is_few_shot_with_the_question_last(answer_type):
    messages = cot_messages(answer_type, SVAMP_QUESTION)
    assert messages[0]["role"] == "system" and "answer is" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": f"Q: {SVAMP_QUESTION}\nA:"}
    turns = messages[1:-1]
    assert len(turns) >= 4 and [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_every_cot_exemplar_ends_with_an_answer_our_parser_reads(answer_type):
    messages = cot_messages(answer_type, "QUESTION")
    for question, answer in zip(messages[1:-1:2], messages[2:-1:2]):
        parsed = parse_cot(answer["content"], answer_type, "stop", question=question["content"])
        assert parsed.error is None, answer["content"]
        assert parsed.rationale == answer["content"]  # nothing after the answer sentence


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_evaluation_prompt_carries_question_and_cot_and_exemplars_show_both_verdicts(answer_type):
    messages = eval_messages(answer_type, SVAMP_QUESTION, COT)
    assert messages[-1]["content"] == format_judged_input(SVAMP_QUESTION, COT)
    assert messages[-1]["content"].startswith(f"Q: {SVAMP_QUESTION}\nProposed answer: {COT}\n")
    verdicts = set()
    for judged, evaluation in zip(messages[1:-1:2], messages[2:-1:2]):
        assert judged["role"] == "user" and evaluation["role"] == "assistant"
        parsed = parse_evaluation(evaluation["content"], "stop")
        assert parsed.error is None and parsed.rationale
        verdicts.add(parsed.verdict)
        # the judged CoT of each exemplar is itself well formed
        request = read_request([judged])
        assert parse_cot(request.cot, answer_type, question=request.question).error is None
    assert verdicts == {"correct", "wrong"}


def test_judged_input_is_the_evaluation_framing_without_exemplars():
    assert format_judged_input(" Q1?\n", " Because. The answer is 3. ") == (
        "Q: Q1?\nProposed answer: Because. The answer is 3.\nEvaluation:"
    )


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_read_request_inverts_both_prompts(answer_type):
    question = "Premise: A line.\nHypothesis: Another line with Q: inside."
    cot = "First line.\nSecond line. Proposed answer: tricky.\nSo the answer is neutral."
    asked = read_request(cot_messages(answer_type, question))
    assert (asked.kind, asked.answer_type, asked.question, asked.cot) == ("cot", answer_type, question, None)
    judged = read_request(eval_messages(answer_type, question, cot))
    assert (judged.kind, judged.answer_type, judged.question, judged.cot) == (
        "evaluation", answer_type, question, cot
    )


def test_read_request_of_a_foreign_prompt():
    assert read_request([{"role": "user", "content": "hello"}]) is None
    bare = read_request([{"role": "user", "content": "Q: 2 + 2?\nA:"}])
    assert (bare.kind, bare.answer_type, bare.question) == ("cot", None, "2 + 2?")
