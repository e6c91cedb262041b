"""The teacher's self-evaluations checked against gold, on a store with known verdicts and answers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import cot_row, evaluation_row

from flows.cli import main
from storage import ExampleRow, Store, queries
from tasks.ops.calibration import answer_truth, calibration_counts

GOLD = {"ex-1": "( 3.0 + 5.0 )", "ex-2": "( 4.0 - 1.0 )", "ex-3": ""}
# Each distinct (answer, gold label) of the judged CoTs, matched once: (5 - 2) is right by value.
TRUTH = {("(3 + 5)", GOLD["ex-1"]): True, ("(3 * 5)", GOLD["ex-1"]): False,
         ("(5 - 2)", GOLD["ex-2"]): True, ("(4 + 1)", GOLD["ex-2"]): False}


@pytest.fixture
def store(tmp_path) -> Store:
    """Four judged CoTs with gold labels, two right and two wrong, and what must not count."""
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow(example_id, "train", f"question {example_id}", label, "arithmetic", "gen")
                  for example_id, label in GOLD.items()])
    right_1 = cot_row("ex-1", 0, "(3 + 5)", "The answer is (3 + 5).")
    wrong_1 = cot_row("ex-1", 1, "(3 * 5)", "The answer is (3 * 5).")
    right_2 = cot_row("ex-2", 0, "(5 - 2)", "The answer is (5 - 2).")  # right by value, not by text
    wrong_2 = cot_row("ex-2", 1, "(4 + 1)", "The answer is (4 + 1).")
    no_gold = cot_row("ex-3", 0, "(1 + 1)", "The answer is (1 + 1).")
    unparsed = cot_row("ex-2", 2, None, None)
    store.append([right_1, wrong_1, right_2, wrong_2, no_gold, unparsed])
    verdicts = {right_1: ["correct", "correct", "wrong"], wrong_1: ["correct", "wrong", "uncertain"],
                right_2: ["wrong", "uncertain"], wrong_2: ["wrong", "wrong", "correct", None],
                no_gold: ["correct"], unparsed: ["wrong"]}
    store.append([evaluation_row(cot, i, verdict, "checked") for cot, said in verdicts.items()
                  for i, verdict in enumerate(said)])
    # Another evaluation prompt version is its own row of the table.
    store.append([dataclasses.replace(evaluation_row(right_1, 0, "uncertain", "checked"), key="v2",
                                      prompt_version="eval-v2")])
    return store


# By hand, prompt eval-v1 (the verdict without a parse, the example without gold and the
# unparseable CoT do not count):
#   right answers: (3 + 5) correct correct wrong; (5 - 2) wrong uncertain
#   wrong answers: (3 * 5) correct wrong uncertain; (4 + 1) wrong wrong correct
# majority (more than half): (3 + 5) correct = right; (4 + 1) wrong = right; the other two have none.
EXPECTED_V1 = dict(
    teacher_model="simulated", prompt_version="eval-v1", evaluations=11,
    correct_on_right=2, correct_on_wrong=2, wrong_on_right=2, wrong_on_wrong=3, uncertain_on_right=1,
    uncertain_on_wrong=1, judged_cots=4, majority_right=2,
    precision_correct=0.5, recall_correct=0.4, precision_wrong=0.6, recall_wrong=0.5, majority_accuracy=0.5,
)
EXPECTED_V2 = dict(
    teacher_model="simulated", prompt_version="eval-v2", evaluations=1,
    correct_on_right=0, correct_on_wrong=0, wrong_on_right=0, wrong_on_wrong=0, uncertain_on_right=1,
    uncertain_on_wrong=0, judged_cots=1, majority_right=0,
    precision_correct=None, recall_correct=0.0, precision_wrong=None, recall_wrong=None, majority_accuracy=0.0,
)


def test_truth_uses_the_answer_types_matching_and_skips_cots_without_gold_or_answer(store):
    assert answer_truth(store, "equation") == TRUTH


def test_calibration_equals_the_hand_computed_confusion_matrix(store):
    assert calibration_counts(store, "equation") == [EXPECTED_V1, EXPECTED_V2]


def test_calibration_views_are_in_the_sandboxed_sql(store):
    truth = answer_truth(store, "equation")
    columns, rows = queries.run_sql(store, "SELECT prompt_version, correct_on_wrong, majority_right FROM calibration",
                                    truth)
    assert rows == [("eval-v1", 2, 2), ("eval-v2", 0, 0)]
    columns, rows = queries.run_sql(
        store, "SELECT verdict, count(*) FROM judged_verdicts WHERE NOT answer_right GROUP BY 1 ORDER BY 1", truth)
    assert rows == [("correct", 2), ("uncertain", 1), ("wrong", 3)]


def test_status_shows_the_block_and_json_has_the_raw_counts(store, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"name": "arithmetic", "arithmetic": {"train": 5, "test": 2}},
                                    "store": {"path": str(tmp_path / "store")}}))
    assert main(["status", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == [EXPECTED_V1, EXPECTED_V2]
    assert main(["status", str(path)]) == 0
    block = capsys.readouterr().out.split("calibration:\n")[1].splitlines()
    assert block[:5] == [
        "  simulated / eval-v1: 11 verdicts on 4 CoTs",
        "    verdict     answer right  answer wrong",
        "    correct                2             2",
        "    wrong                  2             3",
        "    uncertain              1             1",
    ]
    assert "majority verdict right on 2/4 CoTs (0.50)" in block[5]
    assert main(["sql", str(path), "SELECT majority_accuracy FROM calibration ORDER BY 1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["majority_accuracy", "0.0", "0.5"]
