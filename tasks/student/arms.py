"""An arm of a config: its entry, its folder beside the store, the rows it trains and is picked on,
and the pointer (trained.json) to its trained checkpoints.

Checkpoints live under `<store>/students/<arm>/` (in the object store of a URL store, see
tasks.student.folders); with train.seeds, the run of train.seed stays
there and each other seed's run lives in `<store>/students/<arm>/seed-<n>/`, scored under the name
`<arm>/seed-<n>`, so that adding seeds to a trained config keeps its runs. Checkpoint selection uses the validation split
(carved from train); test is only scored.
"""

from __future__ import annotations

from pathlib import Path

from storage import Store
from tasks.config import ArmConfig, Config
from tasks.data.trainsets import ArmRows, describe_stored, read_arm_rows
from tasks.student import freshness
from tasks.student.folders import ArmFolder


class NothingToTrain(ValueError):
    """The store lacks the rows an arm needs; the message says which command fills them."""


def find_arm(config: Config, name: str) -> ArmConfig:
    for arm in config.train.arms:
        if arm.name == name:
            return arm
    raise NothingToTrain(f"no arm named {name!r}; the config has {[arm.name for arm in config.train.arms]}")


def arm_folder(config: Config, arm: str, seed: int | None = None) -> ArmFolder:
    """The folder of an arm's run with `seed` (None: train.seed): beside a local store, or in an
    object store with a local mirror (tasks.student.folders)."""
    return ArmFolder.of_store(Store(config.store.path), f"students/{seeded_name(config, arm, seed)}")


def seeded_name(config: Config, arm: str, seed: int | None = None) -> str:
    """The name an arm's run with `seed` is scored under: the arm's own for train.seed."""
    return arm if seed is None or seed == config.train.seed else f"{arm}/seed-{seed}"


def with_seed(config: Config, seed: int | None) -> Config:
    """The config one seed's run trains with: train.seed set to it."""
    if seed is None or seed == config.train.seed:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def arm_rows(config: Config, store: Store, arm: ArmConfig) -> ArmRows:
    """The arm's rows (read on one connection); NothingToTrain, naming the command that fills the
    store, when they are missing."""
    rows = read_arm_rows(config, store, arm)
    if not rows.training.rows:
        raise NothingToTrain(
            f"arm {arm.name!r}: no usable training rows from train.sources ({describe_stored(store)}); run "
            "`mindsmirror generate CONFIG` or `mindsmirror import dss CONFIG`, or name a stored source, teacher_model "
            "or prompt version in train.sources"
        )
    if rows.self_eval is not None and not rows.self_eval.rows:
        raise NothingToTrain(f"arm {arm.name!r} wants self-evaluations but none are stored for the CoTs of "
                             f"train.sources ({describe_stored(store)}); generate them first")
    return rows


def trained_checkpoints(folder: Path, name: str) -> tuple[Path, Path | None]:
    """The arm's best checkpoint and, for arms with self_eval, its best stage-1 checkpoint."""
    record = freshness.read_record(folder, freshness.TRAINED)
    if record is None:
        raise NothingToTrain(f"arm {name!r} has not been trained yet; run `mindsmirror train CONFIG`")
    self_eval = record.get("self_eval_checkpoint")
    return folder / record["checkpoint"], self_eval and folder / self_eval
