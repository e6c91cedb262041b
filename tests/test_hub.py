"""SVAMP, CommonsenseQA and ANLI R1 by hub id and revision, read offline (HF_HUB_OFFLINE=1) from
local folders in the hub repositories' layout: Parquet files per split and the README's configs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import ConfigError, DatasetConfig, parse_config
from tasks.data.datasets import DatasetError, load_dataset, load_sources

pytest.importorskip("datasets")

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _hub_folder(folder: Path, subset: str, splits: dict[str, list[dict]], subfolder: str | None = None) -> str:
    """A dataset repository as the hub lays it out: <subfolder>/<split>-00000-of-00001.parquet and
    a README whose `configs:` name the subset and its split files."""
    subfolder = subfolder or subset
    lines = ["---", "configs:", f"- config_name: {subset}", "  data_files:"]
    for split, records in splits.items():
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(records), folder / subfolder / f"{split}-00000-of-00001.parquet")
        lines += [f"  - split: {split}", f"    path: {subfolder}/{split}-*"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]))
    return str(folder)


def _svamp_problems(n: int = 1000) -> list[dict]:
    return [{"ID": f"chal-{i}", "Body": f"Tom had {i} apples.", "Question": "How many?",
             "Equation": f"( {i}.0 + 1.0 )", "Answer": i + 1.0, "Type": "Addition"} for i in range(1, n + 1)]


def _by_split(rows) -> dict[str, list]:
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row.split, []).append(row)
    return out


def test_svamp_from_the_hub_is_split_800_200_by_dss_seed_then_carved_720_80(tmp_path):
    problems = _svamp_problems()
    random.Random(1).shuffle(problems)  # a mirror's order and split layout do not matter: IDs order them
    hub = _hub_folder(tmp_path / "svamp", "default", {"train": problems[:700], "test": problems[700:]}, "data")

    rows = _by_split(load_dataset(DatasetConfig(name="svamp", hub=hub, revision=REVISION, splits=["train", "test"])))

    assert {split: len(r) for split, r in rows.items()} == {"train": 720, "validation": 80, "test": 200}
    order = np.random.RandomState(0).permutation(1000)
    assert [r.input for r in rows["test"]] == [f"Tom had {i + 1} apples.\nHow many?" for i in order[800:]]
    assert rows["test"][0].example_id == "svamp-test-00000" and rows["test"][0].label == f"( {order[800] + 1}.0 + 1.0 )"


def test_svamp_from_the_hub_equals_the_dss_folder_row_for_row(tmp_path, shared_data):
    problems = json.loads((shared_data / "svamp" / "SVAMP.json").read_text())
    hub = _hub_folder(tmp_path / "svamp", "default", {"test": problems}, "data")
    from_hub = load_dataset(DatasetConfig(name="svamp", hub=hub, revision=REVISION))
    from_folder = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp")))
    strip = [(r.example_id, r.split, r.input, r.label) for r in from_folder]
    assert [(r.example_id, r.split, r.input, r.label) for r in from_hub] == strip


def _cqa(i: int) -> dict:
    choices = [f"choice {i}-{k}" for k in range(5)]
    return {"id": f"q{i:04d}", "question": f"Where is thing {i}?", "choices": choices, "answer": choices[i % 5],
            "abstractive_explanation": "because", "extractive_explanation": "because"}


def test_cqa_from_the_hub_trains_on_train_and_tests_on_the_dev_set(tmp_path):
    hub = _hub_folder(tmp_path / "cos_e", "v1.11", {"train": [_cqa(i) for i in range(30)],
                                                    "validation": [_cqa(100 + i) for i in range(12)]})

    rows = _by_split(load_dataset(DatasetConfig(name="cqa", hub=hub, revision=REVISION)))

    assert {split: len(r) for split, r in rows.items()} == {"train": 27, "validation": 3, "test": 12}
    first = rows["test"][0]
    assert first.example_id == "q0100" and first.label == "choice 100-0"
    assert first.input == "Where is thing 100?\nAnswer Choices:\n" + "\n".join(
        f"({letter}) choice 100-{k}" for k, letter in enumerate("abcde"))


def test_cqa_from_the_hub_splits_9741_into_8766_and_975_like_the_dss_folder(tmp_path, shared_data):
    folder = shared_data / "cqa"
    records = {split: [json.loads(line) for line in (folder / f"cqa_{split}.json").read_text().splitlines()]
               for split in ("train", "test")}
    hub = _hub_folder(tmp_path / "cos_e", "v1.11", {"train": records["train"], "validation": records["test"]})
    from_hub = load_dataset(DatasetConfig(name="cqa", hub=hub, revision=REVISION))
    assert {s: len(r) for s, r in _by_split(from_hub).items()} == {"train": 8766, "validation": 975, "test": 1221}
    from_folder = load_dataset(DatasetConfig(name="cqa", path=str(folder)))
    assert [(r.example_id, r.split, r.input, r.label) for r in from_hub] == [
        (r.example_id, r.split, r.input, r.label) for r in from_folder]


def _anli(i: int) -> dict:
    return {"uid": f"u{i}", "premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}.", "label": i % 3,
            "reason": ""}


def test_anli_r1_from_the_hub_uses_its_own_dev_split_for_validation(tmp_path):
    hub = _hub_folder(tmp_path / "anli", "plain_text", {
        "train_r1": [_anli(i) for i in range(20)], "dev_r1": [_anli(100 + i) for i in range(6)],
        "test_r1": [_anli(200 + i) for i in range(6)], "train_r2": [_anli(300)],
    })

    sources = load_sources(DatasetConfig(name="anli1", hub=hub, revision=REVISION, limit=4))

    assert [(s.name, len(s.rows), s.total_rows) for s in sources] == [("train", 4, 20), ("valid", 4, 6),
                                                                       ("test", 4, 6)]
    assert [r.label for r in sources[0].rows] == ["entailment", "neutral", "contradiction", "entailment"]
    assert sources[1].rows[0].split == "validation" and sources[1].rows[0].example_id == "u100"
    assert sources[2].rows[0].input == "Premise: Premise 200.\nHypothesis: Hypothesis 200."


def test_a_hub_dataset_without_a_pinned_revision_is_a_config_error():
    with pytest.raises(ConfigError, match="needs dataset.revision"):
        parse_config({"dataset": {"name": "svamp", "hub": "tongyx361/svamp"}})
    with pytest.raises(ConfigError, match="both set"):
        parse_config({"dataset": {"name": "svamp", "hub": "x/y", "revision": REVISION, "path": "data/svamp"}})


def test_an_uncached_hub_dataset_offline_fails_in_one_line_with_the_fix():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(DatasetError, match="cannot be loaded") as error:
        load_dataset(DatasetConfig(name="anli1", hub="mindsmirror-test/certainly-not-cached", revision=REVISION))
    assert "\n" not in str(error.value) and "HF_HUB_OFFLINE" in str(error.value)


def test_a_partial_svamp_copy_is_refused(tmp_path):
    hub = _hub_folder(tmp_path / "svamp", "default", {"train": _svamp_problems(700)}, "data")
    with pytest.raises(DatasetError, match="700 problems, expected SVAMP's 1000"):
        load_dataset(DatasetConfig(name="svamp", hub=hub, revision=REVISION))


def test_importing_dss_rationales_needs_the_dss_folder_not_the_hub(tmp_path):
    from storage import Store
    from tasks.data.importers import import_dss

    cfg = DatasetConfig(name="svamp", hub=str(tmp_path), revision=REVISION)
    with pytest.raises(DatasetError, match="set dataset.path"):
        import_dss(Store(str(tmp_path / "store")), cfg)
