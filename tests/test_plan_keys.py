"""Planning derives each evaluation key once: later plans anti-join the kept keys in DuckDB and
plan exactly what a plan deriving every key would."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import pytest

from storage import CorruptFileError, CotRow, EvaluationRow, Store, keycache
from tasks.config import parse_config
from tasks.generation.plan import plan_generation, request_for, sync_examples
from tasks.teacher.keys import Sampling, _reference_key, sample_keys


def _config(root: Path, n_evals: int = 3):
    return parse_config({
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 12, "test": 2}},
        "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": 2, "n_evals": n_evals},
        "store": {"path": str(root)},
    })


def _store_cots(store: Store, config, examples, kind) -> list[CotRow]:
    cots = []
    for example in examples:
        request, _ = request_for(config.teacher, kind, "cot", example, None, 2)
        for index, key in zip(request.indices, request.keys):
            answer = None if index == 1 and example.example_id.endswith("3") else example.label
            cots.append(CotRow(key, example.example_id, index, f"So {answer}.", answer,
                               f"So {answer}." if answer else None, None if answer else "no answer", "stop",
                               "simulated-teacher", "v", 0.7, 1.0, 256, "teacher", "call"))
    store.append(cots)
    return cots


def _answer_some(store: Store, config, examples, kind, cots: list[CotRow]) -> int:
    """Every other parseable CoT gets its first evaluation; returns how many did."""
    by_id = {example.example_id: example for example in examples}
    rows = []
    for cot in cots[::2]:
        if cot.parse_error is None:
            request, _ = request_for(config.teacher, kind, "evaluation", by_id[cot.example_id], cot, 1)
            rows.append(EvaluationRow(request.keys[0], cot.example_id, cot.cot_index, cot.key, 0, "ok", "correct",
                                      "ok", None, "stop", "simulated-teacher", "e", 0.7, 1.0, 64, "teacher", "c"))
    store.append(rows)
    return len(rows)


def _requests(plan) -> list[tuple]:
    return [(r.kind, r.example_id, r.indices, r.keys, r.cot.key if r.cot else None)
            for work in plan.work for r in ([work.cot_request] if work.cot_request else []) + list(work.eval_requests)]


def test_sample_keys_of_one_prompt_are_the_keys_of_each_index():
    messages = [{"role": "system", "content": 'say "é"\n\u2028'}, {"role": "user", "content": "2 + 2"}]
    for judged in (None, "cot-key"):
        sampling = Sampling(0.7, 0.95, 256)
        keys = sample_keys(endpoint="e", model="m", prompt_version="v", messages=messages, sampling=sampling,
                           indices=range(11), judged=judged)
        assert keys == [_reference_key("e", "m", "v", messages, sampling, i, judged) for i in range(11)]


def test_plans_with_kept_keys_match_plans_that_derive_every_key(tmp_path):
    config = _config(tmp_path / "store")
    store = Store(config.store.path)
    examples, kind = sync_examples(store, config)
    cots = _store_cots(store, config, examples, kind)
    answered = _answer_some(store, config, examples, kind, cots)
    judged = sum(cot.parse_error is None for cot in cots)

    dry = plan_generation(store, config, kind, examples, remember_keys=False)
    assert not (tmp_path / "store" / keycache.FOLDER).exists()  # a dry run writes nothing
    first = plan_generation(store, config, kind, examples)
    assert (tmp_path / "store" / keycache.FOLDER).is_dir()
    again = plan_generation(store, config, kind, examples)  # every key from the cache now
    assert _requests(dry) == _requests(first) == _requests(again)
    assert dry.eval_requests == judged and dry.cot_requests == 0
    assert sum(len(r[2]) for r in _requests(again)) == judged * 3 - answered

    # More evaluations per CoT: the kept keys cover indices 0-2 only, the rest are derived.
    more = _config(tmp_path / "store", n_evals=5)
    grown = plan_generation(store, more, kind, examples)
    shutil.rmtree(tmp_path / "store" / keycache.FOLDER)
    assert _requests(grown) == _requests(plan_generation(store, more, kind, examples, remember_keys=False))


def _store_everything(store: Store, config, examples, kind) -> None:
    """Every CoT and (one per parseable CoT) evaluation the config wants: nothing is missing."""
    by_id = {example.example_id: example for example in examples}
    for cot in _store_cots(store, config, examples, kind):
        if cot.parse_error is None:
            request, _ = request_for(config.teacher, kind, "evaluation", by_id[cot.example_id], cot, 1)
            store.append([EvaluationRow(request.keys[0], cot.example_id, cot.cot_index, cot.key, 0, "ok", "correct",
                                        "ok", None, "stop", "simulated-teacher", "e", 0.7, 1.0, 64, "teacher", "c")])


def test_a_plan_that_finds_nothing_is_settled_until_a_part_is_added_merged_or_moved_away(tmp_path):
    config = _config(tmp_path / "store", n_evals=1)
    store = Store(config.store.path)
    examples, kind = sync_examples(store, config)
    _store_everything(store, config, examples, kind)
    settled = tmp_path / "store" / keycache.SETTLED

    assert not plan_generation(store, config, kind, examples, remember_keys=False).work
    assert not settled.exists()  # a dry run writes nothing
    assert not plan_generation(store, config, kind, examples).work  # keeps its derived keys: not settled yet
    assert not settled.exists()
    assert not plan_generation(store, config, kind, examples).work
    assert len(list(settled.iterdir())) == 1

    def reads_no_table(*_):
        raise AssertionError("a settled plan read the store")

    settled_store = Store(config.store.path)
    settled_store.read = reads_no_table
    assert not plan_generation(settled_store, config, kind, examples, remember_keys=False).work

    # Any change to the parts plans in full again: a part overwritten in place is read, and named, ...
    evaluations = sorted((tmp_path / "store" / "evaluations").glob("part-*.parquet"))
    intact = evaluations[-1].read_bytes()
    evaluations[-1].write_bytes(b"not parquet")
    with pytest.raises(CorruptFileError, match=evaluations[-1].name):
        plan_generation(store, config, kind, examples)
    evaluations[-1].write_bytes(intact)
    # ... a part moved away is planned for, ...
    store.quarantine([str(evaluations[0])])
    assert plan_generation(store, config, kind, examples).eval_requests == 1
    # ... so are merged parts (here: nothing missing after the merge, and settled again) ...
    shutil.move(str(tmp_path / "store" / "_quarantine" / "evaluations" / evaluations[0].name), evaluations[0])
    store.compact()
    assert not plan_generation(store, config, kind, examples).work
    assert len(list(settled.iterdir())) == 2
    # ... and more examples or more evaluations per CoT.
    grown = [*examples, dataclasses.replace(examples[0], example_id="new", input="What is 1 + 1?")]
    assert plan_generation(store, config, kind, grown).cot_requests == 1
    assert plan_generation(store, _config(tmp_path / "store", n_evals=2), kind, examples).eval_requests > 0


def test_a_settled_plan_reads_the_tables_only_for_examples_added_or_changed_since(tmp_path, monkeypatch):
    config = _config(tmp_path / "store", n_evals=1)
    store = Store(config.store.path)
    examples, kind = sync_examples(store, config)
    _store_everything(store, config, examples, kind)
    plan_generation(store, config, kind, examples)  # keeps its derived keys
    assert not plan_generation(store, config, kind, examples).work  # settles every example
    planned = []
    uncached = keycache.uncached_examples

    def planning(con, wanted, n_cots):
        planned.append(sorted(wanted.column("example_id").to_pylist()))
        return uncached(con, wanted, n_cots)

    monkeypatch.setattr(keycache, "uncached_examples", planning)
    added = dataclasses.replace(examples[0], example_id="added", input="What is 1 + 1?")
    changed = dataclasses.replace(examples[1], input="What is 2 + 2?")
    grown = [added, changed, *examples[2:]]

    incremental = plan_generation(store, config, kind, grown, remember_keys=False)
    assert incremental.cot_requests == 2
    assert planned == [sorted(["added", examples[1].example_id])]
    # It asks what a plan of every example asks, with nothing settled.
    shutil.rmtree(tmp_path / "store" / keycache.SETTLED)
    full = plan_generation(store, config, kind, grown, remember_keys=False)
    assert len(planned[1]) == len(grown)
    assert _requests(incremental) == _requests(full)


def test_only_the_newest_settled_markers_are_kept_and_never_the_one_just_written(tmp_path):
    store = Store(str(tmp_path / "store"))
    folder = tmp_path / "store" / keycache.SETTLED
    start = time.time() - 1000
    for number in range(keycache.KEPT_SETTLED + 3):
        keycache.settle(store, f"state-{number}", {"e1": "hash"})
        os.utime(folder / f"state-{number}.json", (start + number, start + number))  # one second apart
    newest = {f"state-{number}.json" for number in range(3, keycache.KEPT_SETTLED + 3)}
    assert {path.name for path in folder.iterdir()} == newest

    # A marker written now survives even if the others look newer (clocks of another writer).
    for path in folder.iterdir():
        os.utime(path, (start + 5000, start + 5000))
    keycache.settle(store, "state-now", {"e2": "hash"})
    markers = {path.name for path in folder.iterdir()}
    assert len(markers) == keycache.KEPT_SETTLED and "state-now.json" in markers
    assert keycache.settled_examples(store, "state-now") == {"e2": "hash"}
