"""SVAMP, CommonsenseQA and ANLI R1 from the Hugging Face Hub, by dataset id and pinned revision.

Each hub dataset is turned into the records of the Distilling-Step-by-Step (DSS) files, in their
order, so a hub run holds the same examples, under the same ids, as a run on a DSS folder:

- svamp: the 1,000 SVAMP problems (any split layout; ordered by their ID, chal-1 … chal-1000),
  input = Body + "\\n" + Question, label = Equation; train = the first 800 of
  numpy RandomState(0).permutation(1000), test = the other 200 (DSS's SVAMPDatasetLoader). The 10%
  validation carve then happens as for the folder (720 / 80 / 200).
- cqa: CoS-E v1.11 (CommonsenseQA questions with explanations), train 9,741 -> 8,766 / 975 after
  the carve; its validation split (the CommonsenseQA dev set, 1,221) is the test set.
- anli1: ANLI train_r1 / dev_r1 / test_r1 = 16,946 / 1,000 / 1,000; labels 0/1/2 = entailment /
  neutral / contradiction.

`dataset.hub` may also be a local folder in a hub repository's layout (Parquet files and the
README's `configs:`), which `datasets.load_dataset` reads the same way: the tests use one, offline.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import DatasetConfig
from tasks.data.files import DatasetError


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the hub as this project reads it: the subset (config name) and which hub split
    feeds each DSS file split."""

    id: str
    revision: str | None
    subset: str | None
    splits: dict[str, str]  # DSS file split -> hub split


# The documented ids and revisions (README "Public datasets" says how sure each pin is); None: no
# documented commit was found, so a config names one itself.
KNOWN = {
    "svamp": HubDataset("tongyx361/svamp", "b1659891d2fadaf805de8ff31f46a3e2cdd2966c", None, {}),
    "cqa": HubDataset("Salesforce/cos_e", None, "v1.11", {"train": "train", "test": "validation"}),
    "anli1": HubDataset("facebook/anli", "ab481543fcf139fd7c3307a8097a58f0e10cc165", None,
                        {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}),
}
SVAMP_PROBLEMS, SVAMP_TRAIN, SVAMP_SEED = 1000, 800, 0


def hub_records(cfg: DatasetConfig, file_splits: list[str]) -> dict[str, tuple[list[dict], int, str]]:
    """For each DSS file split ("train", "valid", "test"): the first `cfg.limit` records in DSS
    file order, the split's full row count, and where they came from."""
    loaded = _load(cfg)
    where = f"{cfg.hub}@{cfg.revision[:12]}"
    if cfg.name == "svamp":
        by_split = _svamp_splits(loaded, where)
    else:
        mapping = KNOWN[cfg.name].splits
        missing = [mapping[s] for s in file_splits if mapping[s] not in loaded]
        if missing:
            raise DatasetError(
                f"dataset.hub {where}: no split(s) {missing} (it has {sorted(loaded)}); is it {KNOWN[cfg.name].id}?"
            )
        by_split = {s: loaded[mapping[s]].to_list() for s in file_splits}
    return {
        split: (by_split[split][: cfg.limit or None], len(by_split[split]), f"{where}/{split}")
        for split in file_splits
    }


def _load(cfg: DatasetConfig):
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "dataset.hub needs the `datasets` library: pip install -e '.[hub]' (or use dataset.path)"
        ) from None
    subset = KNOWN[cfg.name].subset
    try:
        if Path(cfg.hub).is_dir():
            # Read afresh into memory: the library's cache keys two local folders of the same name and
            # subset alike, and would hand back (or check against) the other one's rows.
            with tempfile.TemporaryDirectory() as cache:
                return datasets.load_dataset(cfg.hub, subset, cache_dir=cache, keep_in_memory=True)
        return datasets.load_dataset(cfg.hub, subset, revision=cfg.revision)
    except Exception as error:  # the library raises many kinds (offline, missing revision, bad id, bad files)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(
            f"dataset.hub {cfg.hub!r} (revision {cfg.revision}, subset {subset}): cannot be loaded: {first}; "
            "check the id and revision, or download it once with HF_HUB_OFFLINE unset"
        ) from None


def _svamp_splits(loaded, where: str) -> dict[str, list[dict]]:
    """The 1,000 problems, wherever the hub copy puts them, split 800 / 200 as DSS does."""
    problems = [record for split in sorted(loaded) for record in loaded[split].to_list()]
    if len(problems) != SVAMP_PROBLEMS:
        raise DatasetError(
            f"dataset.hub {where}: {len(problems)} problems, expected SVAMP's {SVAMP_PROBLEMS} "
            "(ID, Body, Question, Equation); point dataset.hub at a copy of all of SVAMP"
        )
    for row, record in enumerate(problems):
        if not all(isinstance(record.get(key), str) for key in ("ID", "Body", "Question", "Equation")):
            raise DatasetError(f"{where} row {row}: expected text fields ID, Body, Question, Equation")
        if not record["ID"].rsplit("-", 1)[-1].isdigit():
            raise DatasetError(f"{where} row {row}: ID {record['ID']!r} is not SVAMP's chal-<number>")
    problems.sort(key=lambda record: int(record["ID"].rsplit("-", 1)[-1]))
    records = [{"input": p["Body"] + "\n" + p["Question"], "label": p["Equation"]} for p in problems]
    order = np.random.RandomState(SVAMP_SEED).permutation(SVAMP_PROBLEMS)
    return {"train": [records[i] for i in order[:SVAMP_TRAIN]], "test": [records[i] for i in order[SVAMP_TRAIN:]]}
