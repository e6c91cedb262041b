"""Whether an arm's training or evaluation is still up to date, so a rerun can skip it.

An arm's training inputs are its resolved config (the arm, the training and validation settings,
the student), the snapshot ids of the rows it trains and validates on, and the student model it
starts from; its evaluation inputs are those plus the checkpoints scored, the evaluation settings
and the rows scored. Each is hashed into one id, recorded beside the arm's checkpoints when the work
finishes (trained.json, evaluated.json). A rerun whose id matches the record, and whose outputs are
still there, does nothing; any change gives another id, and the work is done again. Each seed of
train.seeds is a run of its own, with its own folder and records. The snapshot ids are remembered
under the store's parts they were read from (tasks.data.trainsets.RowsState), so a rerun over parts
that have not changed decides without reading a row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from storage import Store, queries
from tasks.config import ArmConfig, Config
from tasks.data.datasets import answer_type
from tasks.data.trainsets import data_snapshots
from tasks.student.prefixes import PREFIXES

TRAINED = "trained.json"
EVALUATED = "evaluated.json"


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def student_identity(model: str) -> object:
    """A model by its name, and for a local folder by its files' names, sizes and times, so that a
    model saved again under the same path counts as a different one."""
    folder = Path(model)
    if model == "tiny" or not folder.is_dir():
        return model
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return [model, [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def row_snapshots(train_rows: Sequence, validation_rows: Sequence, self_eval_rows: Sequence = (),
                  judged_rows: Sequence = ()) -> dict[str, str | None]:
    """The snapshot ids of the rows an arm trains and is picked on, as training_inputs takes them."""
    return data_snapshots({"train_rows": train_rows, "validation_rows": validation_rows,
                           "self_eval_rows": self_eval_rows, "judged_rows": judged_rows})  # stage 1 is picked on the judged rows


def training_inputs(config: Config, arm: ArmConfig, snapshots: dict[str, str | None]) -> str:
    """The id of everything an arm's checkpoints depend on (snapshots: row_snapshots' ids). Other
    arms of the config are left out, so adding or changing one arm retrains only that arm."""
    return _digest({
        "arm": arm.model_dump(),
        # the seed list too: each seed's run depends on its own seed (train.seed), not on the others
        "train": config.train.model_dump(exclude={"arms", "seeds"}),
        "student": config.student.model_dump(),
        "student_files": student_identity(config.student.model),
        "evaluate": config.evaluate.model_dump(),  # validation decoding picks the checkpoint
        "answer_type": answer_type(config.dataset),
        **snapshots,
        "task_prefixes": PREFIXES,  # the tiny tokenizer learns them, and each is a task the student learns
    })


def evaluation_inputs(config: Config, trained: dict, checkpoints: Sequence[object],
                      scored: dict[str, str | None]) -> str:
    """The id of everything an arm's scores depend on: its training inputs, the checkpoints scored
    (their identities, tasks.student.folders.ArmFolder.identity), the evaluation settings and the
    rows of each scored set (scored: their data_snapshots ids)."""
    return _digest({
        "trained": trained.get("inputs"),
        # by their files too: retraining with --force rewrites a checkpoint under the same name
        "checkpoints": list(checkpoints),
        "evaluate": config.evaluate.model_dump(),
        "device": config.train.device,
        "bf16": config.train.bf16,
        "student": config.student.model_dump(),
        "scored": scored,
    })


def write_record(folder: Path, name: str, record: dict) -> None:
    """Write a record file whole or not at all: to a temporary name, then renamed over the old one."""
    path = folder / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def read_record(folder: Path, name: str) -> dict | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def trained_is_current(folder: Path, inputs: str, present: Callable[[str], bool] | None = None) -> dict | None:
    """trained.json when it records these inputs and its checkpoints are still there (`present`
    tells, given a checkpoint's path relative to `folder`; default: on disk)."""
    record = read_record(folder, TRAINED)
    if not record or record.get("inputs") != inputs:
        return None
    wanted = [record.get("checkpoint"), record.get("self_eval_checkpoint")]
    present = present or (lambda path: (folder / path).is_dir())
    if not all(present(path) for path in wanted if path):
        return None
    return record


def evaluated_is_current(store: Store, folder: Path, arm: str, inputs: str) -> bool:
    """Whether evaluated.json records these inputs and the store still holds the arm's scores."""
    record = read_record(folder, EVALUATED)
    if not record or record.get("inputs") != inputs:
        return False
    stored = {(r.split, r.metric, r.checkpoint) for r in queries.latest_results(store) if r.arm == arm}
    return all(tuple(key) in stored for key in record.get("results", []))


def record_evaluation(folder: Path, inputs: str, results: Sequence) -> None:
    """Mark an arm's evaluation done for these inputs (written after its scores are in the store)."""
    keys = [[r.split, r.metric, r.checkpoint] for r in results]
    write_record(folder, EVALUATED, {"inputs": inputs, "results": keys})


def unchanged_message(arm: str, stage: str) -> str:
    verb = {"training": "retrained", "evaluation": "re-evaluated"}[stage]
    return (f"{arm}: unchanged since its last {stage} (same arm config, data snapshot and student), "
            f"not {verb}; --force to redo it")
