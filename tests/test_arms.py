"""Training an arm from the store: which stored rows it trains on, how stage 1 is picked, what it says."""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from conftest import cot_row, evaluation_row

from flows.cli import main
from storage import ExampleRow, Store
from tasks.config import parse_config
from tasks.data.datasets import answer_type
from tasks.data.trainsets import (
    answered_by,
    arm_self_eval_set,
    arm_training_set,
    cot_set,
    label_set,
    provenances,
    read_arm_rows,
    self_eval_set,
)
from tasks.student import NothingToTrain, arm_scoring, arm_training, evaluate_one, freshness, train_one
from tasks.student.arms import arm_rows
from tasks.student.checkpoints import RECORD
from tasks.student.training import data_snapshot
from tasks.teacher.prompts import prompt_version

COT_V1, EVAL_V1 = prompt_version("equation", "cot"), prompt_version("equation", "evaluation")
TEACHER = "gpt-4o-mini"
TRAIN = [(f"tr-{i}", f"Ann has {i + 2} pens and buys {i + 3} more.\nHow many pens now?", i + 2, i + 3)
         for i in range(4)]
VALIDATION = [(f"va-{i}", f"Bo has {i + 4} cups and gets {i + 1} more.\nHow many cups now?", i + 4, i + 1)
              for i in range(3)]


def _cot(example_id, index, a, b, *, model=TEACHER, version=COT_V1, source="teacher", tag=""):
    row = cot_row(example_id, index, f"({a} + {b})", f"{a} + {b} = {a + b}{tag}. The answer is ({a} + {b}).")
    return dataclasses.replace(row, key=f"{row.key}-{model}-{version}-{source}", teacher_model=model,
                               prompt_version=version, source=source)


def _evaluations(cot, verdicts=("correct", "wrong")):
    return [dataclasses.replace(evaluation_row(cot, i, verdict, f"Checked it: {verdict}."),
                                teacher_model=cot.teacher_model, prompt_version=EVAL_V1, source=cot.source)
            for i, verdict in enumerate(verdicts)]


def origin(row) -> str:
    """Which stored CoT a training row came from (the tag its rationale carries)."""
    reasoning = row.rationale.split(". The answer")[0]
    return reasoning[reasoning.index("(") + 1 : -1] if "(" in reasoning else "this run"


def _config(tmp_path, **train):
    return parse_config({
        "dataset": {"name": "arithmetic"},
        "teacher": {"model": TEACHER, "n_cots": 2},
        "store": {"path": str(tmp_path / "store")},
        "student": {"model": "tiny", "max_input_length": 96, "max_target_length": 48,
                    "tiny": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}},
        "train": {"arms": [{"name": "cot-1", "mode": "cot", "n_cots": 1},
                           {"name": "cot-1-selfeval", "mode": "cot", "n_cots": 1, "self_eval": True}],
                  "batch_size": 4, "learning_rate": 0.01, "stage1_steps": 4, "stage2_steps": 2, "eval_every": 1,
                  **train},
        "evaluate": {"batch_size": 16, "max_new_tokens": 8},
    })


@pytest.fixture
def store(tmp_path) -> Store:
    """Every example has CoTs from this run's teacher and prompt, an older prompt version, a second
    teacher and a DSS import, each at cot_index 0 (and 1 for this run's teacher)."""
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow(i, "train", q, f"( {a}.0 + {b}.0 )", "arithmetic", "gen") for i, q, a, b in TRAIN]
                 + [ExampleRow(i, "validation", q, f"( {a}.0 + {b}.0 )", "arithmetic", "gen")
                    for i, q, a, b in VALIDATION])
    cots = []
    for example_id, _, a, b in TRAIN + VALIDATION:
        cots += [_cot(example_id, 0, a, b), _cot(example_id, 1, a, b, tag=" (again)"),
                 _cot(example_id, 0, a, b, version="equation-cot-0", tag=" (old prompt)"),
                 _cot(example_id, 0, a, b, model="gpt-4o", tag=" (other teacher)"),
                 _cot(example_id, 0, a, b, model="palm-540b", version="dss", source="dss", tag=" (dss)")]
    store.append(cots)
    store.append([e for cot in cots if cot.source == "teacher" for e in _evaluations(cot)])
    return store


def test_cot_1_trains_on_exactly_one_cot_per_example_from_this_runs_teacher_and_prompt(tmp_path, store):
    config = _config(tmp_path)
    rows = cot_set(store, "train", 1, "gold", provenances(config, store)).rows
    assert sorted(row.example_id for row in rows) == [i for i, *_ in TRAIN]
    assert {origin(row) for row in rows} == {"this run"}

    trained = train_one(config, "cot-1", progress=False)
    assert trained.train_rows == len(TRAIN)
    record = json.loads((tmp_path / "store" / "students" / "cot-1" / "stage2" / "step-000002" / RECORD).read_text())
    assert record["rows"] == len(TRAIN) and record["data_snapshot"] == data_snapshot(rows)


def test_imports_and_other_teachers_are_chosen_by_name_and_mixing_is_explicit(tmp_path, store):
    def origins(n_cots: int, **train) -> list[str]:
        rows = cot_set(store, "train", n_cots, "gold", provenances(_config(tmp_path, **train), store)).rows
        return sorted(origin(row) for row in rows)

    assert origins(1, sources=[{"source": "dss"}]) == ["dss"] * len(TRAIN)
    assert origins(1, sources=[{"teacher_model": "gpt-4o"}]) == ["other teacher"] * len(TRAIN)
    assert origins(2, sources=[{"cot_prompt_version": "equation-cot-0"}]) == ["old prompt"] * len(TRAIN)
    assert origins(2) == sorted(["this run", "again"] * len(TRAIN))
    assert origins(1, sources=[{"source": "teacher"}, {"source": "dss"}]) == sorted(["dss", "this run"] * len(TRAIN))
    # A CoT two sources both match is trained on once.
    assert origins(2, sources=[{"source": "teacher"}, {"source": "teacher", "teacher_model": TEACHER}]) == \
        origins(2, sources=[{"source": "teacher"}])
    dss = _config(tmp_path, sources=[{"source": "dss"}])
    # Self-evaluations follow the same choice: the DSS import has none, this run's teacher two per CoT.
    assert self_eval_set(store, "train", 1, provenances(dss, store)).rows == []
    assert len(self_eval_set(store, "train", 1, provenances(_config(tmp_path), store)).rows) == 2 * len(TRAIN)


@pytest.mark.parametrize("sources", [None, [{"source": "teacher"}, {"source": "dss"}],
                                     [{"source": "teacher"}, {"source": "teacher", "teacher_model": TEACHER}],
                                     [{"source": "teacher", "teacher_model": "gpt-4o"}, {"source": "teacher"}]])
@pytest.mark.parametrize("arm", [{"mode": "cot", "n_cots": 2}, {"mode": "standard", "labels": "teacher"},
                                 {"mode": "cot", "n_cots": 2, "cot_filter": "teacher_verdict", "n_evals": 1}])
def test_an_arms_rows_are_read_on_one_connection_and_are_the_rows_each_set_reads_alone(tmp_path, store, sources, arm,
                                                                                      monkeypatch):
    config = _config(tmp_path, **({"sources": sources} if sources else {}),
                     arms=[{"name": "arm", "self_eval": True, **arm}])
    arm = config.train.arms[0]
    kind, chosen = answer_type(config.dataset), provenances(config, store)
    alone = (arm_training_set(store, arm, chosen, kind), arm_self_eval_set(store, arm, chosen),
             self_eval_set(store, "validation", arm.n_cots, chosen).rows, label_set(store, "validation").rows)
    connections = []
    monkeypatch.setattr(store, "connect", lambda connect=store.connect, **options: connections.append(1) or
                        connect(**options))
    rows = read_arm_rows(config, store, arm)
    assert len(connections) == 1
    assert (rows.training, rows.self_eval, rows.judged, rows.validation) == alone
    assert rows.training.rows and rows.self_eval.rows and rows.judged


def test_stage_1_is_picked_on_validation_self_evaluation_agreement(tmp_path, store):
    trained = train_one(_config(tmp_path), "cot-1-selfeval", progress=False)
    stage1 = tmp_path / "store" / "students" / "cot-1-selfeval" / "stage1"
    records = [json.loads((path / RECORD).read_text()) for path in sorted(stage1.glob("step-*"))]
    latest = records[-1]
    # Every step was scored on the validation examples' judged CoTs (3 examples x 1 CoT x 2 verdicts).
    assert [step for step, _ in latest["validation"]] == [1, 2, 3, 4]
    best_step, best = max(latest["validation"], key=lambda item: (item[1], -item[0]))
    assert trained.self_eval_checkpoint.endswith(f"step-{best_step:06d}")
    assert trained.self_eval_agreement == best and trained.self_eval_validation_rows == 2 * len(VALIDATION)


def test_train_says_how_many_validation_rows_it_scored_not_the_training_rows(tmp_path, store):
    trained = train_one(_config(tmp_path), "cot-1-selfeval", progress=False)
    line = trained.describe()
    assert trained.validation_rows == len(VALIDATION) and trained.train_rows == len(TRAIN)
    assert f"on {len(VALIDATION)} validation rows" in line
    assert f"trained on {len(TRAIN)} rows" in line
    assert f"self-eval agreement {trained.self_eval_agreement:.4f} on {2 * len(VALIDATION)} validation rows" in line


def test_a_rerun_reads_no_row_while_the_stores_parts_stay_as_they_were(tmp_path, store, monkeypatch):
    config = _config(tmp_path)
    assert not train_one(config, "cot-1-selfeval", progress=False).unchanged
    assert evaluate_one(config, "cot-1-selfeval") is not None
    reads = []

    def counted(read):
        def reading(*args):
            reads.append(read.__name__)
            return read(*args)
        return reading

    monkeypatch.setattr(arm_training, "arm_rows", counted(arm_rows))
    monkeypatch.setattr(arm_scoring, "_scored_rows", counted(arm_scoring._scored_rows))

    def rerun() -> bool:
        return train_one(config, "cot-1-selfeval", progress=False).unchanged and \
            evaluate_one(config, "cot-1-selfeval") is None

    # The ids of the rows it trained and was scored on are remembered under the parts they came from.
    assert rerun() and reads == []
    # A new part (a third CoT, which an arm of one CoT does not train on): the rows are read again,
    # they are the same, so nothing is redone; the next rerun reads nothing again.
    store.append([_cot(TRAIN[0][0], 2, TRAIN[0][2], TRAIN[0][3], tag=" (third)")])
    assert rerun() and reads == ["arm_rows", "_scored_rows"]
    assert rerun() and reads == ["arm_rows", "_scored_rows"]
    # Another arm, or other sources, read their own rows.
    other = _config(tmp_path, sources=[{"source": "teacher", "teacher_model": "gpt-4o"}])
    assert not train_one(other, "cot-1-selfeval", progress=False).unchanged
    assert reads == ["arm_rows", "_scored_rows", "arm_rows"]


def test_the_default_teacher_is_the_model_asked_for_or_a_dated_snapshot_of_it():
    assert answered_by("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert answered_by("gpt-3.5-turbo", "gpt-3.5-turbo-0125")
    assert not answered_by("gpt-4o", "gpt-4o-mini-2024-07-18")
    assert answered_by("simulated-teacher", "simulated", simulate=True)
    assert not answered_by("simulated-teacher", "simulated")


def test_a_teacher_that_answered_under_another_name_is_named_in_the_error(tmp_path, store):
    config = _config(tmp_path, sources=[{"teacher_model": "llama-local"}])
    with pytest.raises(NothingToTrain, match="teacher_model gpt-4o-mini, prompt version equation-cot-1"):
        train_one(config, "cot-1", progress=False)


def test_a_record_is_replaced_whole_so_a_reader_never_sees_half_of_one(tmp_path, store):
    train_one(_config(tmp_path), "cot-1", progress=False)
    folder = tmp_path / "store" / "students" / "cot-1"
    with open(folder / freshness.TRAINED) as reader:  # a reader that opened the record before the rewrite
        before = json.loads((folder / freshness.TRAINED).read_text())
        train_one(_config(tmp_path), "cot-1", progress=False, force=True)
        # Written in place, the open file would now be truncated and rewritten under the reader.
        assert json.loads(reader.read()) == before
    assert json.loads((folder / freshness.TRAINED).read_text())["inputs"] == before["inputs"]
    assert sorted(path.name for path in folder.glob("*.json*")) == ["trained.json"]


def test_predict_takes_an_arm_folder_and_answers_with_its_selected_checkpoint(tmp_path, store, capsys):
    trained = train_one(_config(tmp_path), "cot-1", progress=False)
    folder = tmp_path / "store" / "students" / "cot-1"
    question = TRAIN[0][1]
    assert main(["predict", str(folder), question]) == 0
    from_arm = capsys.readouterr().out
    assert main(["predict", trained.checkpoint, question]) == 0
    assert capsys.readouterr().out == from_arm and from_arm.startswith("answer: ")
    assert main(["predict", str(folder / "stage2"), question]) == 1
    assert "neither a trained arm's folder (no trained.json) nor a student checkpoint" in capsys.readouterr().err
