"""The student's training sets, read from a real Parquet store in tmp_path."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import cot_row, evaluation_row

from storage import CotRow, EvaluationRow, ExampleRow, Store
from storage.queries import TrainingRow, TrainingRows
from tasks.data.trainsets import cot_set, data_snapshot, label_set, self_eval_set
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


def test_a_judged_input_is_format_judged_input_of_its_texts_whatever_whitespace_they_carry(store):
    # The set lays its inputs out from buffers: they must be the strings format_judged_input makes.
    edges = ["\x1c\t", "\u3000", "\x85 ", "\u200b", "\ufeff", "\xa0\u2028", ""]
    question = f"{edges[0]}Dana has 1 cat.\nHow many?{edges[1]}"
    store.append([ExampleRow("ex-4", "train", question, "( 1.0 )", "arithmetic", "gen:3")])
    texts = [f"{before}1 cat. The answer is (1).{after}" for before, after in zip(edges, reversed(edges))]
    judged = [cot("ex-4", index, "(1)", text) for index, text in enumerate(texts)]
    store.append(judged)
    store.append([evaluation(row, 0, "correct") for row in judged])
    inputs = [row.input for row in self_eval_set(store, "train").rows if row.example_id == "ex-4"]
    assert inputs == [format_judged_input(question, text) for text in texts]


def test_label_set_is_the_gold_labels_of_a_split_without_rationales(store):
    validation = label_set(store, "validation")
    assert [(r.example_id, r.label, r.rationale) for r in validation.rows] == [("ex-2", "( 4.0 )", None)]
    assert label_set(store, "test").rows[0].input.startswith("Carla")
    assert label_set(store, "train").excluded == 0


# ---- rows as Arrow columns, and their data snapshot ----------------------------------------------

TRICKY = ["plain", "", "quote \" and back\\slash", "line\nbreak\ttab\r", "ctrl \x00\x1f\x7f", "naïve café",
          "emoji 😀", "Q: a\nProposed answer: b\nEvaluation:", "zz", "a", "A"]


def _rows(count: int, seed: int) -> list[TrainingRow]:
    """Rows with texts json escapes and sorting ties: repeated inputs, None beside "" rationales."""
    rng = random.Random(seed)
    return [TrainingRow(f"ex-{rng.randrange(5)}", rng.choice(TRICKY), rng.choice(TRICKY[:4]),
                        rng.choice([None, *TRICKY[:5]])) for _ in range(count)]


def _arrow(rows: list[TrainingRow], encoded: bool) -> TrainingRows:
    table = pa.table({name: pa.array([getattr(r, name) for r in rows], pa.string())
                      for name in ("example_id", "input", "label", "rationale")})
    if encoded:
        table = pa.table({name: pc.dictionary_encode(table.column(name)) for name in table.column_names})
    return TrainingRows(table)


def test_data_snapshot_names_the_same_rows_by_the_same_id_as_it_always_has():
    rows = [TrainingRow("e2", "Q2", "b", None), TrainingRow("e1", "Q1 \"é\"\n", "a", "why")]
    assert data_snapshot(rows) == "44c68b1f81761cad"  # the value checkpoints trained before record
    assert data_snapshot(_arrow(rows, encoded=False)) == data_snapshot(_arrow(rows, encoded=True)) == "44c68b1f81761cad"


@pytest.mark.parametrize("seed", range(5))
def test_rows_held_as_arrow_columns_have_the_snapshot_of_the_same_rows_as_objects(seed):
    rows = _rows(300, seed)
    assert data_snapshot(_arrow(rows, encoded=False)) == data_snapshot(rows)
    assert data_snapshot(_arrow(rows, encoded=True)) == data_snapshot(rows)


def test_training_rows_read_like_a_list_of_training_rows():
    rows = _rows(20, 0)
    arrow = _arrow(rows, encoded=True)
    assert arrow == rows and list(arrow) == rows and len(arrow) == 20
    assert arrow[3] == rows[3] and arrow[-1] == rows[-1] and arrow[2:9:3] == rows[2:9:3]
    assert arrow != rows[:-1]
    with pytest.raises(IndexError):
        arrow[20]


def test_self_eval_set_of_a_store_has_the_snapshot_of_its_rows_as_objects(store):
    broken = cot("ex-1", 3, None)  # an unparseable CoT that was judged anyway: its pairs are left out
    store.append([broken])
    store.append([evaluation(broken, 0, "correct")])
    judged = self_eval_set(store, "train")
    assert isinstance(judged.rows, TrainingRows) and judged.excluded == 2
    assert data_snapshot(judged.rows) == data_snapshot(list(judged.rows))
    training = cot_set(store, "train", n_cots=4)
    assert data_snapshot(training.rows) == data_snapshot(list(training.rows))
