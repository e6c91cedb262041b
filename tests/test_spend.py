"""Per arm, the teacher spend of the samples it trains on, from the calls that bought them."""

from __future__ import annotations

import pytest
from conftest import cot_row, evaluation_row

from storage import CallRow, ExampleRow, Store
from tasks.config import parse_config
from tasks.ops import spend
from tasks.ops.spend import ArmSpend, arm_spends

GOLD = {"ex-0": "( 2.0 + 3.0 )", "ex-1": "( 3.0 + 4.0 )"}


def call(call_id: str, kind: str, keys: list[str], usd: float) -> CallRow:
    return CallRow(call_id=call_id, kind=kind, example_id="ex", keys=tuple(keys), status="ok", attempts=1,
                   prompt_tokens=100, completion_tokens=100, cost_usd=usd, latency_s=0.1, error=None,
                   teacher_model="simulated")


@pytest.fixture
def config(tmp_path):
    """Two examples; one $0.02 request brought both CoTs of each (right, then wrong), and one $0.01
    request both self-evaluations of each CoT."""
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow(example_id, "train", f"question {example_id}", label, "arithmetic", "gen")
                  for example_id, label in GOLD.items()])
    cots = [cot_row(e, 0, f"({a} + {b})", f"The answer is ({a} + {b}).") for e, (a, b) in (("ex-0", (2, 3)),
                                                                                              ("ex-1", (3, 4)))]
    cots += [cot_row(e, 1, "(9 * 9)", "The answer is (9 * 9).") for e in GOLD]
    evaluations = [evaluation_row(cot, i, "correct", "fine") for cot in cots for i in range(2)]
    store.append(cots)
    store.append(evaluations)
    store.append([call(f"cot-{e}", "cot", [f"{e}-c0", f"{e}-c1"], 0.02) for e in GOLD]
                 + [call(f"eval-{c.key}", "evaluation", [f"{c.key}-v0", f"{c.key}-v1"], 0.01) for c in cots]
                 + [call("other", "cot", ["not-trained-on"], 5.0)])
    return parse_config({
        "teacher": {"model": "simulated", "n_cots": 2, "n_evals": 2},
        "store": {"path": str(tmp_path / "store")},
        "train": {"arms": [
            {"name": "standard-finetune", "mode": "standard", "labels": "gold"},
            {"name": "standard-distill", "mode": "standard", "labels": "teacher"},
            {"name": "cot-2-gold-filtered", "mode": "cot", "n_cots": 2, "cot_filter": "gold"},
            {"name": "cot-2-selfeval-1", "mode": "cot", "n_cots": 2, "self_eval": True, "n_evals": 1},
        ], "sources": [{"source": "teacher", "teacher_model": "simulated", "cot_prompt_version": "cot-v1",
                        "eval_prompt_version": "eval-v1"}]},
    })


def test_each_arm_pays_its_share_of_the_requests_that_bought_its_samples(config):
    spends = {spend.arm: spend for spend in arm_spends(config)}
    assert spends["standard-finetune"] == ArmSpend("standard-finetune", 0.0, 0, 0)
    # the first CoT of each example: half of each $0.02 request
    assert spends["standard-distill"] == ArmSpend("standard-distill", pytest.approx(0.02), 2, 0)
    # the gold filter keeps the right (first) CoTs only
    assert spends["cot-2-gold-filtered"] == ArmSpend("cot-2-gold-filtered", pytest.approx(0.02), 2, 0)
    # all four CoTs ($0.04) and one of the two self-evaluations of each ($0.005 x 4)
    assert spends["cot-2-selfeval-1"] == ArmSpend("cot-2-selfeval-1", pytest.approx(0.06), 4, 4)


def test_a_spend_is_remembered_while_the_parts_of_its_rows_and_calls_stay_as_they_were(config, monkeypatch):
    first = arm_spends(config)

    def unread(*args):
        raise AssertionError("the rows were read again")

    monkeypatch.setattr(spend, "arm_sample_keys", unread)
    assert arm_spends(config) == first
    monkeypatch.undo()
    # A billed retry of one self-evaluation the last arm trains on: a new part of `calls`.
    Store(config.store.path).append([call("retry", "evaluation", ["ex-0-c0-v0"], 0.04)])
    spends = {s.arm: s for s in arm_spends(config)}
    assert spends["cot-2-selfeval-1"] == ArmSpend("cot-2-selfeval-1", pytest.approx(0.06 + 0.04), 4, 4)
    assert spends["standard-distill"] == first[1]
