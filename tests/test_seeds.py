"""train.seeds: every arm is trained and scored once per seed, the report gives mean ± standard
deviation over the seeds, and a longer seed list trains only the seeds not trained yet."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from flows.cli import main
from storage import Store, queries
from tasks.config import ConfigError, load_config

ARM = "cot-1"


def _config(tmp_path: Path, seeds: list[int]) -> Path:
    config = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    config["dataset"]["arithmetic"] = {"train": 40, "test": 10, "seed": 0}
    config["store"]["path"] = str(tmp_path / "store")
    config["student"]["tiny"] = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}
    config["train"].update(stage1_steps=2, stage2_steps=4, eval_every=4, batch_size=8, seeds=seeds)
    config["train"]["arms"] = [{"name": ARM, "mode": "cot", "n_cots": 1}]
    config["evaluate"]["decode"] = ["greedy"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(path: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["run", str(path), "--no-progress"]) == 0
    return capsys.readouterr().out


def _trained_at(arm: Path) -> dict[str, int]:
    """When each seed's checkpoints were last written (its trained.json), by folder."""
    return {str(record.parent.relative_to(arm)): record.stat().st_mtime_ns for record in arm.rglob("trained.json")}


def _test_accuracies(store: Path) -> dict[str, float]:
    return {row.arm: row.value for row in queries.latest_results(Store(str(store)))
            if row.split == "test" and row.metric == "accuracy" and row.arm.startswith(ARM)}


def _report_row(store: Path) -> dict[str, str]:
    with open(store / "report.csv") as handle:
        [row] = [row for row in csv.DictReader(handle) if row["arm"] == ARM]
    return row


def test_seeds_give_mean_and_std_and_a_new_seed_trains_alone(tmp_path, prefect_server, capsys):
    store, arm = tmp_path / "store", tmp_path / "store" / "students" / ARM
    out = _run(_config(tmp_path, [0, 1]), capsys)

    # Seed 0 (train.seed) keeps the arm's folder, seed 1 has its own; each is scored on test.
    assert set(_trained_at(arm)) == {".", "seed-1"}
    accuracies = _test_accuracies(store)
    assert set(accuracies) == {ARM, f"{ARM}/seed-1"}
    mean, std = statistics.fmean(accuracies.values()), statistics.stdev(accuracies.values())
    row = _report_row(store)
    assert (float(row["test accuracy"]), float(row["test accuracy std"]), row["seeds"]) == \
        (mean, std, "2")
    [line] = [line for line in out.splitlines() if line.startswith(f"| {ARM} ")]
    assert f"{100 * mean:.1f} ± {100 * std:.1f}" in line and line.rstrip(" |").split("|")[3].strip() == "2"
    assert "mean ± sample standard deviation" in out
    assert (store / "report.png").is_file()
    with capsys.disabled():
        print("\n" + "\n".join(line for line in out.splitlines() if line.startswith("|")))
    trained = _trained_at(arm)

    # A third seed: only it is trained and scored; the report counts three.
    out = _run(_config(tmp_path, [0, 1, 2]), capsys)
    assert f"{ARM}: unchanged since its last training" in out
    assert f"{ARM}/seed-1: unchanged since its last training" in out
    assert f"{ARM}/seed-2: unchanged" not in out
    after = _trained_at(arm)
    assert {key: after[key] for key in trained} == trained and set(after) == {".", "seed-1", "seed-2"}
    assert set(_test_accuracies(store)) == {ARM, f"{ARM}/seed-1", f"{ARM}/seed-2"}
    assert _report_row(store)["seeds"] == "3"

    # Back to one seed: the arm's own run again, today's columns, nothing retrained.
    out = _run(_config(tmp_path, [0]), capsys)
    assert f"{ARM}: unchanged since its last training" in out
    assert "seeds" not in _report_row(store)


def test_a_seed_listed_twice_is_an_error_that_names_it(tmp_path):
    path = _config(tmp_path, [0, 1, 1])
    with pytest.raises((ConfigError, ValueError), match=r"train.seeds: each seed once, got \[0, 1, 1\]"):
        load_config(path)
