"""A trained arm as a standalone model folder: `mindsmirror export CONFIG ARM OUT`.

LoRA adapters are merged into the base weights, so the folder loads with plain transformers
(`AutoModelForCausalLM` or `AutoModelForSeq2SeqLM` and `AutoTokenizer`), with no mindsmirror or peft.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.config import Config
from tasks.student.arms import NothingToTrain, arm_folder, find_arm, trained_checkpoints
from tasks.student.freshness import TRAINED
from tasks.student.model import load_student, quiet_transformers


def export_arm(config: Config, name: str, out: str | Path) -> Path:
    """Write arm `name`'s selected checkpoint, adapters merged, to `out` (whole or not at all)."""
    find_arm(config, name)
    out = Path(out)
    if out.exists():
        raise NothingToTrain(f"{out} exists; give a new folder to export arm {name!r} into")
    folder = arm_folder(config, name)
    folder.pull_record(TRAINED)
    checkpoint = folder.pull_checkpoint(trained_checkpoints(folder.local, name)[0])
    model, tokenizer = load_student(checkpoint)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
