"""Checkpoint folders are complete or absent: a run killed while saving one leaves nothing that
`--resume` or checkpoint selection takes for a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.student.checkpoints import checkpoint_folders, latest_checkpoint, save_checkpoint


class _Saved:
    """Stands in for a model and a tokenizer: what matters here is the folder, not the weights."""

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "weights.bin").write_bytes(b"w")


def test_a_checkpoint_killed_before_its_rename_is_not_taken_for_one(tmp_path, monkeypatch):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    save_checkpoint(_Saved(), _Saved(), optimizer, tmp_path / "step-000001", {"step": 1})

    def killed(self, target):  # the process dies after the record is written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_Saved(), _Saved(), optimizer, tmp_path / "step-000002", {"step": 2})

    assert latest_checkpoint(tmp_path) == tmp_path / "step-000001"
    assert checkpoint_folders(tmp_path) == [tmp_path / "step-000001"]
