"""An arm's experiment options (n_evals, label_noise, cot_filter) change exactly the rows they should."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from conftest import cot_row, evaluation_row

from storage import ExampleRow, Store
from tasks.config import ArmConfig, ConfigError, parse_config
from tasks.data.noise import restate_answer
from tasks.data.trainsets import arm_self_eval_set, arm_training_set
from tasks.student import freshness, train_one

# Example i asks for (i + 2) + (i + 3); its CoT 0 answers that (right), its CoT 1 the product (wrong).
EXAMPLES = {f"ex-{i}": (i + 2, i + 3) for i in range(4)}
VERDICTS = {  # (example, cot) -> the teacher's verdicts, by eval_index
    ("ex-0", 0): ["correct", "correct", "wrong"],
    ("ex-0", 1): ["correct", "wrong", "wrong"],
    ("ex-1", 0): ["wrong", "wrong", "correct"],  # right, judged wrong
    ("ex-1", 1): ["correct", "correct", "correct"],  # wrong, judged correct
    ("ex-2", 0): ["correct", "correct", "correct"],
    ("ex-2", 1): ["wrong", "wrong", "wrong"],
    ("ex-3", 0): ["correct", "wrong", "uncertain"],  # no majority
    ("ex-3", 1): [],  # never judged
}


def gold(example_id: str) -> str:
    a, b = EXAMPLES[example_id]
    return f"( {a}.0 + {b}.0 )"


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow(example_id, "train", f"Ann has {a} pens and buys {b} more. How many?", gold(example_id),
                             "arithmetic", "gen") for example_id, (a, b) in EXAMPLES.items()])
    cots = {}
    for example_id, (a, b) in EXAMPLES.items():
        for index, op, value in ((0, "+", a + b), (1, "*", a * b)):
            cots[example_id, index] = cot_row(example_id, index, f"({a} {op} {b})",
                                              f"{a} {op} {b} = {value}. The answer is ({a} {op} {b}).")
    store.append(list(cots.values()))
    store.append([evaluation_row(cots[judged], i, verdict, f"Checked: {verdict}.")
                  for judged, said in VERDICTS.items() for i, verdict in enumerate(said)])
    return store


def kept(training) -> list[tuple[str, str]]:
    """(example, the CoT's own answer as its rationale ends) of each training row."""
    return [(row.example_id, row.rationale.split("The answer is ")[1]) for row in training.rows]


def arm(**options) -> ArmConfig:
    return ArmConfig(name="arm", mode="cot", n_cots=2, **options)


def test_n_evals_keeps_the_first_m_evaluations_of_each_cot_in_stage_1(store):
    every = arm_self_eval_set(store, arm(self_eval=True), None)
    first_two = arm_self_eval_set(store, arm(self_eval=True, n_evals=2), None)
    assert len(every.rows) == 21  # 7 judged CoTs x 3
    assert len(first_two.rows) == 14  # 7 judged CoTs x 2
    # exactly the eval_index >= 2 rows are gone: ex-0's CoT 0 loses its third verdict, "wrong"
    assert [r.label for r in first_two.rows[:4]] == ["correct", "correct", "correct", "wrong"]
    assert [r.label for r in every.rows[:6]] == ["correct", "correct", "wrong", "correct", "wrong", "wrong"]


def test_n_evals_is_validated_against_the_teacher_and_the_arm():
    arms = {"train": {"arms": [{"name": "a", "self_eval": True, "n_evals": 4}]}}
    with pytest.raises(ConfigError, match="n_evals=4 but teacher.n_evals=3; lower the arm's n_evals"):
        parse_config({"teacher": {"n_evals": 3}, **arms})
    assert parse_config({"teacher": {"n_evals": 4}, **arms}).train.arms[0].n_evals == 4
    with pytest.raises(ConfigError, match="n_evals applies to arms with self_eval"):
        parse_config({"train": {"arms": [{"name": "a", "n_evals": 2}]}})
    with pytest.raises(ConfigError, match="standard fine-tuning on gold labels has none"):
        parse_config({"train": {"arms": [{"name": "a", "mode": "standard", "cot_filter": "gold"}]}})


def test_cot_filter_teacher_verdict_keeps_cots_most_of_whose_verdicts_say_correct(store):
    assert kept(arm_training_set(store, arm(cot_filter="teacher_verdict"), None, "equation")) == [
        ("ex-0", "(2 + 3)."), ("ex-1", "(3 * 4)."), ("ex-2", "(4 + 5)."),
    ]
    # judged by their first verdict only, ex-0's and ex-3's first-verdict "correct" CoTs count too
    assert kept(arm_training_set(store, arm(cot_filter="teacher_verdict", n_evals=1), None, "equation")) == [
        ("ex-0", "(2 + 3)."), ("ex-0", "(2 * 3)."), ("ex-1", "(3 * 4)."), ("ex-2", "(4 + 5)."), ("ex-3", "(5 + 6)."),
    ]


def test_cot_filter_gold_keeps_only_cots_whose_answer_equals_gold(store):
    training = arm_training_set(store, arm(cot_filter="gold"), None, "equation")
    assert kept(training) == [("ex-0", "(2 + 3)."), ("ex-1", "(3 + 4)."), ("ex-2", "(4 + 5)."), ("ex-3", "(5 + 6).")]
    assert training.filtered == 4
    assert len(arm_training_set(store, arm(), None, "equation").rows) == 8


def test_label_noise_gives_that_share_of_examples_a_wrong_label_from_the_distribution(store):
    clean = arm_training_set(store, arm(), None, "equation")
    noisy = arm_training_set(store, arm(label_noise=0.5, label_noise_seed=3), None, "equation")
    assert len(noisy.noised) == 2  # round(0.5 x 4 examples)
    for before, after in zip(clean.rows, noisy.rows):
        if after.example_id not in noisy.noised:
            assert after == before
            continue
        assert after.label != gold(after.example_id) and after.label in {gold(e) for e in EXAMPLES}
        assert after.rationale == before.rationale.split("The answer is ")[0] + f"The answer is {after.label}."
    # both CoTs of a noised example carry the same wrong label
    assert len({row.label for row in noisy.rows if row.example_id == noisy.noised[0]}) == 1
    # seeded: the same seed gives the same rows
    assert arm_training_set(store, arm(label_noise=0.5, label_noise_seed=3), None, "equation") == noisy


def test_label_noise_reaches_standard_fine_tuning_and_keeps_rationales_it_cannot_restate(store):
    standard = ArmConfig(name="sft", mode="standard", labels="gold", label_noise=1.0)
    noisy = arm_training_set(store, standard, None, "equation")
    assert noisy.noised == tuple(EXAMPLES)
    assert all(row.label != gold(row.example_id) and row.rationale is None for row in noisy.rows)
    assert restate_answer("3 + 5 = 8 apples", "(9)") == "3 + 5 = 8 apples"
    assert restate_answer("3 + 5 = 8. So the answer is 8.\n", "9") == "3 + 5 = 8. So the answer is 9.\n"


def test_an_arm_at_the_default_options_keeps_its_id_and_a_changed_option_changes_it(tmp_path):
    config = parse_config({"teacher": {"n_evals": 3}})
    ids = {name: freshness.training_inputs(config, options, freshness.row_snapshots([], [])) for name, options in {
        "default": ArmConfig(name="a"), "noise": ArmConfig(name="a", label_noise=0.1),
        "seed": ArmConfig(name="a", label_noise=0.1, label_noise_seed=1), "gold": ArmConfig(name="a", cot_filter="gold"),
    }.items()}
    assert len(set(ids.values())) == 4
    assert ArmConfig(name="a").model_dump() == {"name": "a", "mode": "cot", "labels": "gold", "n_cots": 1,
                                                "self_eval": False}
    # a checkpoint's provenance names the seed of its noise, the default one too
    assert ArmConfig(name="a", label_noise=0.1).model_dump()["label_noise_seed"] == 0


def test_a_changed_option_retrains_the_arm_and_an_unchanged_one_does_not(tmp_path, store):
    def config(**options):
        return parse_config({
            "dataset": {"name": "arithmetic"},
            "teacher": {"model": "simulated", "n_cots": 2, "n_evals": 3},
            "store": {"path": str(tmp_path / "store")},
            "student": {"model": "tiny", "max_input_length": 64, "max_target_length": 32,
                        "tiny": {"d_model": 16, "d_ff": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 200}},
            "train": {"arms": [{"name": "cot-2", "mode": "cot", "n_cots": 2, **options}],
                      "sources": [{"source": "teacher", "teacher_model": "simulated", "cot_prompt_version": "cot-v1",
                                   "eval_prompt_version": "eval-v1"}],
                      "batch_size": 4, "stage1_steps": 0, "stage2_steps": 1, "eval_every": 1},
        })

    first = train_one(config(cot_filter="gold"), "cot-2", progress=False)
    assert first.train_rows == 4 and not first.unchanged
    assert train_one(config(cot_filter="gold"), "cot-2", progress=False).unchanged
    noisy = train_one(config(cot_filter="gold", label_noise=0.5), "cot-2", progress=False)
    assert not noisy.unchanged and noisy.train_rows == 4
