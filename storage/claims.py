"""Claims: a marker per teacher request, so two runs on one store never buy the same answer.

Before a request goes out its run creates `<store>/_claims/<hash of its sample keys>` exclusively.
Another run that planned the same request finds the marker and skips it. The marker says `done`
once the answer is stored, and is removed when the request failed, so a retry can claim it again.
A marker left `inflight` by a process that no longer runs (kill -9) is taken over.

Only local stores get claims: object stores have no exclusive create here, so concurrent runs on a
URL store may pay twice for requests planned at the same moment (the views still count each once).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

_HOST = socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    def __init__(self, root: str):
        self.folder = None if "://" in root else Path(root) / "_claims"
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, keys: Sequence[str]) -> Path:
        digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
        return self.folder / digest

    def _write(self, path: Path, state: str) -> None:
        temporary = path.with_name(f".tmp-{uuid.uuid4().hex}")
        temporary.write_text(json.dumps({"state": state, "host": _HOST, "pid": os.getpid()}))
        os.replace(temporary, path)

    def claim(self, keys: Sequence[str]) -> bool:
        """True if this process may send the request for these keys."""
        if self.folder is None:
            return True
        path = self._path(keys)
        marker = json.dumps({"state": "inflight", "host": _HOST, "pid": os.getpid()})
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.loads(path.read_text() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                return False  # being written or released this instant: leave it to its owner
            stale = held.get("state") == "inflight" and held.get("host") == _HOST and not _alive(held.get("pid", 0))
            if not stale:
                return False
            self._write(path, "inflight")
            return True
        with os.fdopen(descriptor, "w") as handle:
            handle.write(marker)
        return True

    def done(self, keys: Sequence[str]) -> None:
        if self.folder is not None:
            self._write(self._path(keys), "done")

    def release(self, keys: Sequence[str]) -> None:
        if self.folder is not None:
            self._path(keys).unlink(missing_ok=True)
