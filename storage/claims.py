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
    if pid <= 0:  # kill(0, ...) would signal our own process group
        return False
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

    def _marker(self, state: str) -> Path:
        """A complete marker under a temporary name, to be linked or renamed into place."""
        temporary = self.folder / f".tmp-{uuid.uuid4().hex}"
        temporary.write_text(json.dumps({"state": state, "host": _HOST, "pid": os.getpid()}))
        return temporary

    def _write(self, path: Path, state: str) -> None:
        os.replace(self._marker(state), path)

    def claim(self, keys: Sequence[str]) -> bool:
        """True if this process may send the request for these keys."""
        if self.folder is None:
            return True
        path = self._path(keys)
        temporary = self._marker("inflight")
        try:
            # link() is exclusive and atomic: a kill -9 can never leave an empty marker that no
            # later run could tell from one being written (creating and then writing could).
            os.link(temporary, path)
            return True
        except FileExistsError:
            return self._take_over_if_stale(path)
        finally:
            temporary.unlink(missing_ok=True)

    def _take_over_if_stale(self, path: Path) -> bool:
        try:
            held = json.loads(path.read_text())
        except FileNotFoundError:
            return False  # released this instant: its owner's retry may claim it again
        except json.JSONDecodeError:
            held = {"state": "inflight", "host": _HOST, "pid": 0}  # a torn marker of an older version
        stale = held.get("state") == "inflight" and held.get("host") == _HOST and not _alive(held.get("pid", 0))
        if not stale:
            return False
        self._write(path, "inflight")
        return True

    def done(self, keys: Sequence[str]) -> None:
        if self.folder is not None:
            self._write(self._path(keys), "done")

    def release(self, keys: Sequence[str]) -> None:
        if self.folder is not None:
            self._path(keys).unlink(missing_ok=True)
