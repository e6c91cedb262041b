"""The student's training sets, read from a real Parquet store in tmp_path."""

from __future__ import annotations

import pytest
from conftest import cot_row, evaluation_row

from storage import CotRow, EvaluationRow, ExampleRow, Store
from tasks.data.trainsets import cot_set, label_set, self_eval_set
from tasks.teacher.prompts import format_judged_input

QUESTION = "Anna has 3 apples. Anna buys 5 more apples.\nHow many apples does Anna have now?"


def cot(example_id: str, index: int, answer: str | None, rationale: str | None = None) -> CotRow:
    return cot_row(example_id, index, answer, rationale)


def evaluation(judged: CotRow, index: int, verdict: str | None) -> EvaluationRow:
    return evaluation_row(judged, index, verdict, f"3 + 5 = 8, so the answer is {verdict}." if verdict else None)


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"))
    store.append(
        [
            ExampleRow("ex-1", "train", QUESTION, "( 3.0 + 5.0 )", "arithmetic", "gen:0"),
            ExampleRow("ex-2", "validation", "Ben has 4 pens.\nHow many?", "( 4.0 )", "arithmetic", "gen:1"),
            ExampleRow("ex-3", "test", "Carla has 2 books.\nHow many?", "( 2.0 )", "arithmetic", "gen:2"),
        ]
    )
    cots = [
        cot("ex-1", 0, "(3 + 5)", "3 + 5 = 8. The answer is (3 + 5)."),
        cot("ex-1", 1, "(3 * 5)", "3 * 5 = 15. The answer is (3 * 5)."),
        cot("ex-1", 2, None),  # unparseable: never trained on
    ]
    store.append(cots)
    store.append(
        [evaluation(cots[0], 0, "correct"), evaluation(cots[1], 0, "wrong"), evaluation(cots[1], 1, None)]
    )
    return store


def test_cot_set_has_one_row_per_parsed_chain_of_thought_with_gold_or_teacher_labels(store):
    gold = cot_set(store, "train", n_cots=3, labels="gold")
    teacher = cot_set(store, "train", n_cots=3, labels="teacher")
    assert [(r.input, r.label) for r in gold.rows] == [(QUESTION, "( 3.0 + 5.0 )")] * 2
    assert [r.label for r in teacher.rows] == ["(3 + 5)", "(3 * 5)"]
    assert [r.rationale for r in teacher.rows] == [
        "3 + 5 = 8. The answer is (3 + 5).",
        "3 * 5 = 15. The answer is (3 * 5).",
    ]
    assert gold.excluded == teacher.excluded == 1


def test_cot_set_takes_only_the_first_k_chains_of_thought(store):
    assert [r.rationale for r in cot_set(store, "train", n_cots=1).rows] == [
        "3 + 5 = 8. The answer is (3 + 5)."
    ]


def test_self_eval_set_pairs_each_judged_cot_with_its_verdict_and_evaluation(store):
    judged = self_eval_set(store, "train")
    assert [r.input for r in judged.rows] == [
        format_judged_input(QUESTION, "3 + 5 = 8. The answer is (3 + 5)."),
        format_judged_input(QUESTION, "3 * 5 = 15. The answer is (3 * 5)."),
    ]
    assert [r.label for r in judged.rows] == ["correct", "wrong"]
    assert judged.rows[1].rationale == "3 + 5 = 8, so the answer is wrong."
    assert judged.excluded == 1  # the evaluation without a verdict


def test_label_set_is_the_gold_labels_of_a_split_without_rationales(store):
    validation = label_set(store, "validation")
    assert [(r.example_id, r.label, r.rationale) for r in validation.rows] == [("ex-2", "( 4.0 )", None)]
    assert label_set(store, "test").rows[0].input.startswith("Carla")
    assert label_set(store, "train").excluded == 0
