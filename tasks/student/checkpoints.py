"""Checkpoint folders: written whole under a temporary name, marked complete by their record file.

A checkpoint folder holds the student (model and tokenizer), its record (resolved config, data
snapshot id, step, validation scores) and, in the latest one only, the optimizer and RNG state that
`--resume` continues from.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from tasks.student.model import save_student

RECORD = "mindsmirror.json"  # written last into a checkpoint folder: its presence marks it complete
STATE = "trainer_state.pt"  # optimizer and RNG state, kept only in the latest checkpoint
_STEP = re.compile(r"step-\d+")


def checkpoint_folders(out_dir: Path) -> list[Path]:
    """The checkpoint folders of a stage, by step; a folder still being written (`.tmp-step-…`) is none."""
    if not out_dir.exists():
        return []
    return sorted(path for path in out_dir.iterdir() if _STEP.fullmatch(path.name))


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = [path for path in checkpoint_folders(out_dir) if (path / RECORD).is_file()]
    return done[-1] if done else None


def save_checkpoint(model, tokenizer, optimizer, path: Path, record: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_student(model, tokenizer, tmp)
    rng = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / STATE)
    (tmp / RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def prune_checkpoints(out_dir: Path, keep: set[Path]) -> None:
    """Delete checkpoints other than `keep`; optimizer state stays only in the latest one."""
    latest = max(keep)
    for path in checkpoint_folders(out_dir):
        if path not in keep:
            shutil.rmtree(path)
        elif path != latest:
            (path / STATE).unlink(missing_ok=True)
