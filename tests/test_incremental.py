"""A second `mindsmirror run` redoes only what its inputs changed: unchanged arms are neither
retrained nor re-evaluated, a changed arm is, and --force redoes everything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from conftest import REPO

from flows.cli import main


def _config(tmp_path: Path, **arm_changes) -> Path:
    config = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    config["dataset"]["arithmetic"] = {"train": 40, "test": 10, "seed": 0}
    config["store"]["path"] = str(tmp_path / "store")
    config["student"]["tiny"] = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}
    config["train"].update(stage1_steps=2, stage2_steps=4, eval_every=4, batch_size=8)
    config["train"]["arms"] = [
        {"name": "standard-finetune", "mode": "standard", "labels": "gold"},
        {"name": "cot-2-selfeval", "mode": "cot", "n_cots": 2, "self_eval": True, **arm_changes},
    ]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(path: Path, capsys, *flags: str) -> tuple[str, float]:
    capsys.readouterr()
    started = time.perf_counter()
    assert main(["run", str(path), "--no-progress", *flags]) == 0
    return capsys.readouterr().out, time.perf_counter() - started


def _trained_at(store: Path) -> dict[str, float]:
    """When each arm's checkpoints were last written (its trained.json)."""
    return {arm.name: (arm / "trained.json").stat().st_mtime_ns for arm in (store / "students").iterdir()}


def _scored(store: Path) -> dict[str, float]:
    """When each arm was last scored (its evaluated.json, written after its scores are stored)."""
    return {arm.name: (arm / "evaluated.json").stat().st_mtime_ns for arm in (store / "students").iterdir()}


def _latest_record(arm_folder: Path) -> dict:
    stage2 = sorted((arm_folder / "stage2").glob("step-*"))[-1]
    return json.loads((stage2 / "mindsmirror.json").read_text())


def test_reruns_redo_only_what_changed(tmp_path, prefect_server, capsys):
    store = tmp_path / "store"
    path = _config(tmp_path)
    out, first_seconds = _run(path, capsys)
    assert "unchanged" not in out
    trained, scored = _trained_at(store), _scored(store)

    # The same config again: nothing is trained or scored, each arm says so in one line.
    out, second_seconds = _run(path, capsys)
    for arm in ("standard-finetune", "cot-2-selfeval"):
        assert f"{arm}: unchanged since its last training" in out
        assert f"{arm}: unchanged since its last evaluation" in out
    assert _trained_at(store) == trained and _scored(store) == scored
    assert "\n| cot-2-selfeval " in out  # the report is still printed, from the stored scores
    with capsys.disabled():
        print(f"\nfirst run {first_seconds:.1f} s, second run {second_seconds:.1f} s")
    # Both runs pay the same fixed Prefect and process costs (several seconds on a loaded machine),
    # so only the direction is asserted; the skipped work is asserted above.
    assert second_seconds < first_seconds

    # One arm's config changes: that arm alone is retrained and scored again.
    changed = _config(tmp_path, n_cots=1)
    out, _ = _run(changed, capsys)
    assert "standard-finetune: unchanged since its last training" in out
    assert "cot-2-selfeval: unchanged" not in out
    after = _trained_at(store)
    assert after["standard-finetune"] == trained["standard-finetune"]
    assert after["cot-2-selfeval"] > trained["cot-2-selfeval"]
    assert _latest_record(store / "students" / "cot-2-selfeval")["arm"]["n_cots"] == 1
    rescored = _scored(store)
    assert rescored["standard-finetune"] == scored["standard-finetune"]
    assert rescored["cot-2-selfeval"] > scored["cot-2-selfeval"]

    # --force redoes every arm although nothing changed.
    trained = after
    out, _ = _run(changed, capsys, "--force")
    assert "unchanged" not in out
    assert all(later > trained[arm] for arm, later in _trained_at(store).items())
    assert all(later > rescored[arm] for arm, later in _scored(store).items())

    # An arm retrained on its own (train --force) is scored again by the next evaluate.
    scored = _scored(store)
    capsys.readouterr()
    assert main(["train", str(changed), "--arm", "standard-finetune", "--force"]) == 0
    assert main(["evaluate", str(changed)]) == 0
    out = capsys.readouterr().out
    assert "standard-finetune: unchanged" not in out and "cot-2-selfeval: unchanged since its last evaluation" in out
    assert _scored(store)["standard-finetune"] > scored["standard-finetune"]
