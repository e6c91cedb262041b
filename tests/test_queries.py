from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from conftest import cot_row, evaluation_row

from storage import CallRow, CotRow, EvaluationRow, ExampleRow, ResultRow, Store, queries
from storage.queries import SelfEvalPair, TrainingRow

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def example(i: int, split: str = "train") -> ExampleRow:
    return ExampleRow(
        example_id=f"e{i}",
        split=split,
        input=f"question {i}",
        label=f"gold {i}",
        dataset="test",
        source=f"test.jsonl:{i}",
    )


def cot(example_id: str, index: int, error: str | None = None) -> CotRow:
    if error:
        return cot_row(example_id, index, None, None, error)
    return cot_row(example_id, index, f"teacher {example_id}/{index}", f"rationale {example_id}/{index}")


def evaluation(judged: CotRow, index: int, verdict: str | None = "correct") -> EvaluationRow:
    return evaluation_row(judged, index, verdict, f"because {index}" if verdict else None)


def call(call_id: str, status: str, cost: float, latency: float, keys=("x",), minutes: int = 0) -> CallRow:
    return CallRow(
        call_id=call_id,
        kind="cot",
        example_id="e1",
        keys=tuple(keys),
        status=status,
        attempts=1,
        prompt_tokens=100,
        completion_tokens=40,
        cost_usd=cost,
        latency_s=latency,
        error=None if status == "ok" else "HTTP 500",
        teacher_model="m",
        created_at=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
def store(tmp_path) -> Store:
    """e1, e2 train; e3 validation; e4 test. e1 has 3 CoTs (index 2 unparseable), e2 one, e3 one."""
    store = Store(str(tmp_path / "store"))
    store.append([example(1), example(2), example(3, "validation"), example(4, "test")])
    cots = [cot("e1", 0), cot("e1", 1), cot("e1", 2, error="no answer"), cot("e2", 0), cot("e3", 0)]
    store.append(cots)
    store.append(
        [
            evaluation(cots[0], 0),
            evaluation(cots[0], 1, "wrong"),
            evaluation(cots[1], 0, None),  # unparseable evaluation
            evaluation(cots[2], 0),  # evaluation of an unparseable CoT
            evaluation(cots[3], 0, "uncertain"),
        ]
    )
    store.append(
        [
            call("c1", "ok", 0.25, 1.0),
            call("c2", "ok", 0.5, 3.0),
            call("c3", "failed", 0.0, 9.0, keys=("missing-key",)),
        ]
    )
    return store


def test_new_examples_are_those_not_stored(store):
    wanted = [example(2), example(5), example(1), example(6, "test")]
    assert queries.new_examples(store, wanted) == [wanted[1], wanted[3]]
    assert queries.new_examples(store, []) == []


def test_missing_keys_anti_joins_wanted_against_stored(store):
    assert queries.missing_keys(store, "cots", ["e1-c0", "e9-c0", "e2-c0", "e9-c1"]) == {"e9-c0", "e9-c1"}
    assert queries.missing_keys(store, "evaluations", ["e1-c0-v0", "e1-c0-v7"]) == {"e1-c0-v7"}
    assert queries.missing_keys(store, "cots", []) == set()


def test_missing_keys_treats_keys_as_values_not_sql(store):
    hostile = ["x' OR '1'='1", "e1-c0'; DROP TABLE cots; --"]
    assert queries.missing_keys(store, "cots", hostile) == set(hostile)


def test_missing_keys_refuses_tables_without_a_single_key(store):
    with pytest.raises(ValueError, match="one-column key"):
        queries.missing_keys(store, "predictions", ["a"])
    with pytest.raises(ValueError, match="one-column key"):
        queries.missing_keys(store, "cots; DROP", ["a"])


def test_examples_of_splits_round_trip_as_rows(store):
    rows = queries.examples(store, ["train", "test"])
    assert [row.example_id for row in rows] == ["e4", "e1", "e2"]  # by split, then id
    assert rows[1] == replace(example(1), created_at=rows[1].created_at)
    assert rows[1].created_at.tzinfo is not None


def test_cots_for_examples_and_by_keys(store):
    assert [c.key for c in queries.cots_for_examples(store, ["e1", "e3"])] == [
        "e1-c0",
        "e1-c1",
        "e1-c2",
        "e3-c0",
    ]
    assert [c.key for c in queries.cots_for_examples(store, ["e1"], keys=["e1-c1", "e2-c0"])] == ["e1-c1"]
    assert [c.key for c in queries.cots_by_keys(store, ["e2-c0", "e1-c2", "nope"])] == ["e1-c2", "e2-c0"]
    assert queries.cots_by_keys(store, ["e2-c0"])[0].answer == "teacher e2/0"


def test_spent_usd_sums_every_call_once(store):
    assert queries.spent_usd(store) == pytest.approx(0.75)
    store.append([call("c1", "ok", 0.25, 1.0)])  # the same call recorded twice
    assert queries.spent_usd(store) == pytest.approx(0.75)
    assert queries.spent_usd(Store(str(store.root) + "-empty")) == 0.0


def test_failed_keys_are_the_missing_keys_of_failed_requests(store):
    assert queries.failed_keys(store) == {"missing-key"}


def test_status_counts_everything(store):
    report = queries.status(store)
    assert report.rows == {
        "examples": 4,
        "cots": 5,
        "evaluations": 5,
        "calls": 3,
        "predictions": 0,
        "results": 0,
    }
    assert report.examples_by_split == {"test": 1, "train": 2, "validation": 1}
    assert report.cots_by_split == {"train": 4, "validation": 1}
    assert (report.cots_parsed, report.cots_unparseable) == (4, 1)
    assert (report.evaluations_parsed, report.evaluations_unparseable) == (4, 1)
    assert (report.calls_ok, report.calls_failed, report.failed_requests) == (2, 1, 1)
    assert (report.prompt_tokens, report.completion_tokens) == (300, 120)
    assert report.cost_usd == pytest.approx(0.75)
    assert report.latency_p50_s == pytest.approx(2.0)  # of successful calls: 1.0 and 3.0
    assert report.as_dict()["calls"]["failed requests still missing"] == 1


def test_status_of_an_empty_store(tmp_path):
    report = queries.status(Store(str(tmp_path)))
    assert set(report.rows.values()) == {0} and report.latency_p50_s is None and report.cost_usd == 0.0


def test_self_eval_rows_pair_each_cot_with_each_evaluation(store):
    pairs, excluded = queries.self_eval_rows(store, "train")
    assert pairs == [
        SelfEvalPair("e1", "question 1", "rationale e1/0", "correct", "because 0"),
        SelfEvalPair("e1", "question 1", "rationale e1/0", "wrong", "because 1"),
        SelfEvalPair("e2", "question 2", "rationale e2/0", "uncertain", "because 0"),
    ]
    assert excluded == 2  # the unparseable evaluation, and the evaluation of the unparseable CoT


def test_self_eval_rows_honour_n_cots_and_split(store):
    pairs, excluded = queries.self_eval_rows(store, "train", n_cots=1)
    assert [(p.example_id, p.verdict) for p in pairs] == [
        ("e1", "correct"),
        ("e1", "wrong"),
        ("e2", "uncertain"),
    ]
    assert excluded == 0
    assert queries.self_eval_rows(store, "test") == ([], 0)


def test_self_evaluations_older_than_the_cot_they_judge_are_left_out(tmp_path):
    """A CoT lost to a corrupt part and bought again is a new row; what judged the lost text is stale."""
    store = Store(str(tmp_path / "store"))
    store.append([example(1)])
    rebought = cot("e1", 0)
    stale = replace(evaluation(rebought, 0), created_at=rebought.created_at - timedelta(hours=1))
    store.append([rebought])
    store.append([stale, evaluation(rebought, 1, "wrong")])
    pairs, _ = queries.self_eval_rows(store, "train")
    assert [p.verdict for p in pairs] == ["wrong"]


def test_cot_rows_with_gold_or_teacher_labels(store):
    rows, excluded = queries.cot_rows(store, "train", n_cots=5, labels="gold")
    assert rows == [
        TrainingRow("e1", "question 1", "gold 1", "rationale e1/0"),
        TrainingRow("e1", "question 1", "gold 1", "rationale e1/1"),
        TrainingRow("e2", "question 2", "gold 2", "rationale e2/0"),
    ]
    assert excluded == 1
    rows, _ = queries.cot_rows(store, "train", n_cots=1, labels="teacher")
    assert [(r.example_id, r.label) for r in rows] == [("e1", "teacher e1/0"), ("e2", "teacher e2/0")]
    with pytest.raises(ValueError, match="labels"):
        queries.cot_rows(store, "train", n_cots=1, labels="student")


def test_label_rows_have_gold_labels_and_no_rationale(store):
    assert queries.label_rows(store, "validation") == [TrainingRow("e3", "question 3", "gold 3", None)]
    assert [r.example_id for r in queries.label_rows(store, "test")] == ["e4"]


def test_latest_results_take_the_newest_value_per_metric(store):
    def result(value, minutes, checkpoint):
        return ResultRow(
            arm="cot",
            split="test",
            metric="accuracy",
            value=value,
            n=200,
            checkpoint=checkpoint,
            created_at=T0 + timedelta(minutes=minutes),
        )

    store.append([result(0.5, 0, "step-100"), result(0.6, 10, "step-200")])
    store.append([replace(result(0.7, 5, "step-150"), split="validation")])
    latest = queries.latest_results(store)
    assert [(r.split, r.value, r.checkpoint) for r in latest] == [
        ("test", 0.6, "step-200"),
        ("validation", 0.7, "step-150"),
    ]


def test_run_sql_answers_columns_and_rows_on_a_store_or_a_connection(store):
    assert queries.run_sql(
        store, "SELECT split, count(*) AS n FROM examples GROUP BY split ORDER BY split"
    ) == (["split", "n"], [("test", 1), ("train", 2), ("validation", 1)])
    con = store.connect()
    try:
        assert queries.run_sql(con, "SELECT count(*) AS n FROM rejects") == (["n"], [(2,)])
        assert queries.missing_keys(con, "cots", ["e1-c0", "zz"]) == {"zz"}
    finally:
        con.close()


def test_answered_requests_missing_samples_are_listed_with_how_many_are_gone(store):
    store.append([call("c4", "ok", 0.1, 1.0, keys=("e1-c0", "e1-c1", "lost-a", "lost-b"))])
    store.append([call("c5", "ok", 0.1, 1.0, keys=("e1-c0", "e1-c1", "lost-a", "lost-b"))])  # bought twice
    missing = queries.answered_but_missing(store)
    # c1 and c2 of the fixture asked for a key "x" that was never stored
    assert sorted((r.kind, r.example_id, r.missing, r.asked) for r in missing) == [
        ("cot", "e1", 1, 1), ("cot", "e1", 2, 4)]


def test_stored_sample_keys_look_in_cots_and_evaluations(store):
    assert queries.stored_sample_keys(store, ["e1-c0", "e1-c0-v1", "nope"]) == {"e1-c0", "e1-c0-v1"}
