"""An arm's folder: beside a local store, or in an object store with a local mirror.

With a URL store (s3://, gs://, any fsspec URL) the arm's folder `<store>/students/<arm>/` lives in
the object store, and a local mirror of it is the scratch folder training writes into and the cache
evaluate, export and predict read from. Training uploads each checkpoint as soon as it is saved;
evaluate, export and predict download the checkpoints they read. So a run killed on one machine
resumes from its last uploaded checkpoint on another, and any machine evaluates what another trained.

In the object store a checkpoint is complete when its record (mindsmirror.json) is there: the record
is uploaded last, after every other file of the checkpoint, and deleted first when a checkpoint of the
same name is uploaded again or pruned, so no reader takes a half-uploaded checkpoint. A download is
checked against the record before and after it, and a mirrored checkpoint whose record equals the
stored one is not downloaded again. trained.json and evaluated.json are single objects, replaced whole.

The mirror of `s3://bucket/prefix/students/arm` is `<cache>/s3/bucket/prefix/students/arm`, where
<cache> is $MINDSMIRROR_CACHE, else $XDG_CACHE_HOME/mindsmirror, else ~/.cache/mindsmirror.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from storage import Store
from storage.location import locate
from tasks.student.checkpoints import RECORD, STATE, checkpoint_folders
from tasks.student.freshness import student_identity

_STAGE, _STEP = re.compile(r"stage\d+"), re.compile(r"step-\d+")
_DOWNLOAD_ATTEMPTS = 3  # a checkpoint replaced while it downloads is downloaded again


class MissingCheckpoint(ValueError):
    """A checkpoint named by a record is not complete in the object store; the message names it."""


def cache_root() -> Path:
    if os.environ.get("MINDSMIRROR_CACHE"):
        return Path(os.environ["MINDSMIRROR_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mindsmirror"


def mirror_path(url: str) -> Path:
    """The local mirror of a folder URL: the cache, then the URL's scheme, bucket and key."""
    parsed = urlparse(url)
    parts = [parsed.scheme, parsed.netloc, *parsed.path.strip("/").split("/")]
    if any(part in ("", ".", "..") for part in parts):
        raise MissingCheckpoint(f"{url}: give a folder URL such as s3://bucket/runs/svamp/students/<arm>")
    return cache_root().joinpath(*parts)


def is_url(path: str | Path) -> bool:
    scheme = urlparse(str(path)).scheme
    return len(scheme) > 1 and scheme != "file"


@dataclass(frozen=True)
class ArmFolder:
    """Where an arm's checkpoints and records are read and written: `local` always; with a URL store
    also `url`, of which `local` is the mirror."""

    local: Path
    url: str | None = None
    filesystem: object | None = None  # fsspec, for url
    path: str = ""  # url inside filesystem

    @classmethod
    def of_store(cls, store: Store, relative: str) -> ArmFolder:
        """The folder `relative` (students/<arm>[/seed-<n>]) of a store, local or in an object store."""
        local = store.local_folder()
        if local is not None:
            return cls(local / relative)
        location = store.location
        url = f"{location.url}/{relative}"
        return cls(mirror_path(url), url, location.fsspec_filesystem, f"{location.path}/{relative}")

    @classmethod
    def at(cls, url: str) -> ArmFolder:
        """A folder given by URL (an arm's folder or a checkpoint), mirrored locally."""
        location = locate(url)
        return cls(mirror_path(location.url), location.url, location.fsspec_filesystem, location.path)

    @property
    def remote(self) -> bool:
        return self.url is not None

    def _remote(self, local: Path) -> str:
        relative = local.relative_to(self.local).as_posix()
        return self.path if relative == "." else f"{self.path}/{relative}"

    def public(self, local: Path) -> str:
        """How a file under this folder is named in results, records and messages: its URL, or its path."""
        if not self.remote:
            return str(local)
        relative = local.relative_to(self.local).as_posix()
        return self.url if relative == "." else f"{self.url}/{relative}"

    def identity(self, checkpoint: Path | None) -> object:
        """What a checkpoint is, for tasks.student.freshness: its files (local), or its URL and the
        digest of its stored record (the same on every machine, read without downloading it)."""
        if checkpoint is None:
            return None
        if not self.remote:
            return student_identity(str(checkpoint))
        return [self.public(checkpoint), hashlib.sha256(self._record(self._remote(checkpoint))).hexdigest()[:16]]

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        return self.filesystem.exists(f"{self.path}/{name}")

    def has_checkpoint(self, relative: str) -> bool:
        """Whether the checkpoint `relative` (stage2/step-…) is complete here, local or stored."""
        if not self.remote:
            return (self.local / relative).is_dir()
        return self.filesystem.exists(f"{self.path}/{relative}/{RECORD}")

    # ---- records -----------------------------------------------------------------------------

    def pull_record(self, name: str) -> None:
        """Mirror the stored record `name` (trained.json, evaluated.json); none stored, none mirrored."""
        if not self.remote:
            return
        try:
            data = self.filesystem.cat_file(f"{self.path}/{name}")
        except FileNotFoundError:
            (self.local / name).unlink(missing_ok=True)
            return
        self.local.mkdir(parents=True, exist_ok=True)
        tmp = self.local / f".{name}.{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        os.replace(tmp, self.local / name)

    def push_record(self, name: str) -> None:
        if self.remote:
            self.filesystem.put_file(str(self.local / name), f"{self.path}/{name}")

    # ---- checkpoints -------------------------------------------------------------------------

    def push_checkpoint(self, checkpoint: Path) -> None:
        """Upload a checkpoint just saved in the mirror, its record last, then delete the stored
        checkpoints of its stage that the mirror pruned (and the optimizer state it dropped)."""
        if not self.remote:
            return
        fs, target = self.filesystem, self._remote(checkpoint)
        _remove(fs, [f"{target}/{RECORD}"])  # an older checkpoint of this name stops being complete first
        for file in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != RECORD):
            fs.put_file(str(file), f"{target}/{file.relative_to(checkpoint).as_posix()}")
        fs.put_file(str(checkpoint / RECORD), f"{target}/{RECORD}")
        self._prune(checkpoint.parent)

    def _prune(self, stage: Path) -> None:
        kept = {path.name: (path / STATE).is_file() for path in checkpoint_folders(stage)}
        stale = []
        for file in self._files(self._remote(stage)):
            step, _, name = file.partition("/")
            if _STEP.fullmatch(step) and (step not in kept or (name == STATE and not kept[step])):
                stale.append(f"{self._remote(stage)}/{file}")
        _remove(self.filesystem, [file for file in stale if file.endswith(f"/{RECORD}")])
        _remove(self.filesystem, [file for file in stale if not file.endswith(f"/{RECORD}")])

    def pull_resumable(self) -> None:
        """Make the mirror's checkpoints those complete in the object store, for `--resume`: each
        stage's latest (with its optimizer state) and best."""
        if not self.remote:
            return
        complete = set()
        for file in self._files(self.path):
            parts = file.split("/")
            if len(parts) == 3 and _STAGE.fullmatch(parts[0]) and _STEP.fullmatch(parts[1]) and parts[2] == RECORD:
                complete.add(f"{parts[0]}/{parts[1]}")
        for stage in [path for path in self.local.glob("stage*") if _STAGE.fullmatch(path.name)]:
            for path in checkpoint_folders(stage):
                if path.relative_to(self.local).as_posix() not in complete:
                    shutil.rmtree(path)
        for relative in sorted(complete):
            self.pull_checkpoint(self.local / relative)

    def pull_checkpoint(self, checkpoint: Path) -> Path:
        """The mirrored checkpoint at `checkpoint` (a path in the mirror), downloaded unless the
        mirror's record equals the stored one; MissingCheckpoint when it is not complete there."""
        if not self.remote:
            return checkpoint
        source = self._remote(checkpoint)
        for _ in range(_DOWNLOAD_ATTEMPTS):
            record = self._record(source)
            if (checkpoint / RECORD).is_file() and (checkpoint / RECORD).read_bytes() == record:
                return checkpoint
            tmp = checkpoint.with_name(f".download-{checkpoint.name}-{uuid.uuid4().hex}")
            try:
                for file in self._files(source):
                    if file != RECORD:
                        (tmp / file).parent.mkdir(parents=True, exist_ok=True)
                        self.filesystem.get_file(f"{source}/{file}", str(tmp / file))
                if self._record(source) != record:  # replaced while downloading: its files may be mixed
                    continue
                (tmp / RECORD).write_bytes(record)
                shutil.rmtree(checkpoint, ignore_errors=True)
                tmp.rename(checkpoint)
                return checkpoint
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        raise MissingCheckpoint(f"{self.public(checkpoint)} changed while it downloaded {_DOWNLOAD_ATTEMPTS} times")

    def pull_folder(self) -> Path:
        """This whole folder as one checkpoint (a URL given to `mindsmirror predict`)."""
        return self.pull_checkpoint(self.local)

    def _record(self, source: str) -> bytes:
        try:
            return self.filesystem.cat_file(f"{source}/{RECORD}")
        except FileNotFoundError:
            raise MissingCheckpoint(
                f"{self.url}{source[len(self.path):]}: no complete checkpoint there (its {RECORD} is missing); "
                "train the arm again, or `mindsmirror train CONFIG --resume` to finish it") from None

    def _files(self, root: str) -> list[str]:
        """The stored files under `root`, relative to it."""
        try:
            found = self.filesystem.find(root)
        except FileNotFoundError:
            return []
        root = self.filesystem._strip_protocol(root).rstrip("/")
        return sorted(path[len(root) + 1:] for path in found if path.startswith(root + "/"))


def _remove(filesystem, paths: list[str]) -> None:
    for path in paths:
        try:
            filesystem.rm_file(path)
        except FileNotFoundError:
            pass
