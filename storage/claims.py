"""Claims: leases on teacher requests, so two live runs on one store never buy one answer at once.

Before a request goes out its run creates `<store>/_claims/<hash of its sample keys>` exclusively: a
lease naming its owner (a random id per Claims object, with host and pid) and when it expires. While
a Claims object holds leases, a background thread renews them every lease_s / 3, so a live owner's
lease never runs out however long its request takes. A run that planned the same request finds the
live lease and skips it. A lease whose owner died is taken over: at once when the owner was a
process of this machine (same host, boot and pid namespace) that no longer runs, after expiry
otherwise (another host or container, a machine that froze).

Once its answer is stored a lease is removed, and the request's hash is appended to its run's done
log (`<store>/_claims/done-<owner>`, one line per request): a run that planned the same request
before the answer was stored claims it afresh, finds the hash in a done log and skips it. The store
is the truth, not the logs: a run that finds a hash checks the store, and if the samples are not all
there (a corrupt part was moved aside) it asks again. A done log is kept a week after its last line
(no run plans that long before it buys). A failed request's lease is removed so a retry may claim it.

Local stores and s3:// stores get claims (`open_claims` picks the kind from the store's location):
a local lease is created with link(), an S3 lease with a conditional write (storage.s3_claims).
Other URL stores have no exclusive create here, so generation refuses them (ClaimsUnavailable).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

_HOST = socket.gethostname()
LEASE_S = 60.0  # how long a crashed owner on another machine blocks its requests
_TAKEOVER_TOKENS_KEPT_S = 86400
DONE_LOGS_KEPT_S = 7 * 86400


def _machine() -> str:
    """This process's machine as pids see it: host, kernel boot and pid namespace (containers
    sharing a host name still differ by namespace)."""
    parts = [_HOST]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


_MACHINE = _machine()


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


def _parse(raw: bytes) -> dict | None:
    try:
        held = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return held if isinstance(held, dict) else None


def digest(keys: Sequence[str]) -> str:
    """A request's name among the leases, whatever the order of its keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]


def lease(owner: str, lease_s: float, state: str = "inflight") -> bytes:
    """A lease's content: who holds it, on which machine and process, and until when."""
    now = time.time()
    return json.dumps({
        "state": state, "owner": owner, "host": _HOST, "machine": _MACHINE, "pid": os.getpid(),
        "renewed": now, "expires": now + lease_s,
    }).encode()


def replaceable(held: dict | None, owner: str, written_at: float, lease_s: float,
                stored: Callable[[], bool]) -> bool:
    """Whether another run's lease may be taken over: unreadable, a done marker whose samples are
    not all stored, expired, or held by a process of this machine that no longer runs."""
    if held is None:  # a torn marker of an older version, which wrote in place
        return True
    if held.get("state") == "done":
        return not stored()
    if held.get("owner") == owner:
        return False
    # Markers of older versions carry neither machine nor expiry: their host and write time stand in.
    same_machine = held["machine"] == _MACHINE if "machine" in held else held.get("host") == _HOST
    expired = time.time() > held.get("expires", written_at + lease_s)
    return expired or (same_machine and not _alive(held.get("pid", 0)))


def all_stored(root: str, keys: Sequence[str]) -> bool:
    from storage.queries import stored_sample_keys
    from storage.store import Store

    return stored_sample_keys(Store(root), keys) == set(keys)


class Claims(Protocol):
    """Leases on teacher requests (see the module docstring); one per run."""

    owner: str
    remote: bool  # each call is a network round trip (callers may move it off their event loop)

    def claim(self, keys: Sequence[str]) -> bool:
        """True if this process may send the request for these keys."""

    def done(self, keys: Sequence[str]) -> None:
        """The answer is stored: remember the request as done, then remove its lease."""

    def release(self, keys: Sequence[str]) -> None:
        """The request failed or was not sent: remove its lease so a retry may claim it."""


class ClaimsUnavailable(RuntimeError):
    """A store whose filesystem offers no atomic create to build leases on."""


def open_claims(root: str, lease_s: float = LEASE_S) -> Claims:
    """The claims of the store at `root`: files beside a local store, conditional writes on S3."""
    scheme = urlparse(root).scheme.lower()
    if len(scheme) <= 1 or scheme == "file":
        return LocalClaims(root, lease_s)
    if scheme == "s3":
        from storage.s3_claims import S3Claims

        return S3Claims(root, lease_s)
    raise ClaimsUnavailable(
        f"generation needs claims (leases) on its store, and a {scheme}:// store has none here, so two runs "
        "could pay twice for one answer: set store.path to a local folder or an s3:// URL")


class LocalClaims:
    remote = False

    def __init__(self, root: str, lease_s: float = LEASE_S):
        if "://" in root and not root.startswith("file://"):
            raise ValueError(f"local claims need a local store, not {root}")
        self.root = root
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex
        self.folder = Path(urlparse(root).path if root.startswith("file://") else root) / "_claims"
        self._held: set[Path] = set()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._done: set[str] = set()  # the hashes in every done log, as far as read
        self._done_read: dict[str, int] = {}  # done log name -> bytes read
        self._tokens = self.folder / ".takeovers"
        self._tokens.mkdir(parents=True, exist_ok=True)
        self._remove_old_tokens()
        self._remove_old_done_logs()

    def _path(self, keys: Sequence[str]) -> Path:
        return self.folder / digest(keys)

    def _marker(self, state: str) -> Path:
        """A complete marker under a temporary name, to be linked or renamed into place."""
        temporary = self.folder / f".tmp-{uuid.uuid4().hex}"
        temporary.write_bytes(lease(self.owner, self.lease_s, state))
        return temporary

    def _write(self, path: Path, state: str) -> None:
        os.replace(self._marker(state), path)

    def claim(self, keys: Sequence[str]) -> bool:
        """True if this process may send the request for these keys."""
        path = self._path(keys)
        temporary = self._marker("inflight")
        try:
            # link() is exclusive and atomic: a kill -9 can never leave an empty marker that no
            # later run could tell from one being written (creating and then writing could).
            os.link(temporary, path)
        except FileExistsError:
            if not self._take_over(path, keys):
                return False
        finally:
            temporary.unlink(missing_ok=True)
        if self._answered(path.name, keys):  # stored by a run since this one planned
            self._release_owned(path)
            return False
        self._hold(path)
        return True

    def _answered(self, name: str, keys: Sequence[str]) -> bool:
        """Whether a done log lists the request and the store holds all of its samples."""
        return name in self._read_done_logs() and all_stored(self.root, keys)

    def _read_done_logs(self) -> set[str]:
        """Every hash in the done logs, reading only what was appended since the last call (a torn
        last line, from a process killed while appending, is read once it is whole)."""
        for log in self.folder.glob("done-*"):
            start = self._done_read.get(log.name, 0)
            try:
                with open(log, "rb") as handle:
                    handle.seek(start)
                    tail = handle.read()
            except FileNotFoundError:
                continue
            whole = tail[: tail.rfind(b"\n") + 1]
            self._done.update(whole.decode().split())
            self._done_read[log.name] = start + len(whole)
        return self._done

    def _take_over(self, path: Path, keys: Sequence[str]) -> bool:
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False  # released this instant: its owner's retry may claim it again
        if not replaceable(_parse(raw), self.owner, mtime, self.lease_s, lambda: all_stored(self.root, keys)):
            return False
        # Of several runs that judged this same marker replaceable, the one that creates its token wins.
        token = self._tokens / f"{path.name}-{hashlib.sha256(raw).hexdigest()[:16]}"
        try:
            os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        self._write(path, "inflight")
        return True

    def _replaceable(self, held: dict, mtime: float, keys: Sequence[str]) -> bool:
        if held.get("state") == "done":
            from storage.queries import stored_sample_keys
            from storage.store import Store

            return stored_sample_keys(Store(self.root), keys) != set(keys)
        if held.get("owner") == self.owner:
            return False
        # Markers of older versions carry neither machine nor expiry: their host and file time stand in.
        same_machine = held["machine"] == _MACHINE if "machine" in held else held.get("host") == _HOST
        expired = time.time() > held.get("expires", mtime + self.lease_s)
        return expired or (same_machine and not _alive(held.get("pid", 0)))

    def done(self, keys: Sequence[str]) -> None:
        """The answer is stored: log the request as done, then remove its lease (in this order, so
        a run that claims it the moment the lease goes finds it in the log)."""
        path = self._path(keys)
        with open(self.folder / f"done-{self.owner}", "a", encoding="ascii") as log:
            log.write(path.name + "\n")
        self._release_owned(path)

    def release(self, keys: Sequence[str]) -> None:
        self._release_owned(self._path(keys))

    def _release_owned(self, path: Path) -> None:
        with self._lock:
            self._held.discard(path)
            if self._owns(path):  # never remove a lease another run took over
                path.unlink(missing_ok=True)

    def _owns(self, path: Path) -> bool:
        try:
            held = _parse(path.read_bytes())
        except FileNotFoundError:
            return False
        return held is None or held.get("owner") == self.owner

    # ---- renewal -------------------------------------------------------------------------------

    def _hold(self, path: Path) -> None:
        with self._lock:
            self._held.add(path)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_while_holding, name="claims-renewer",
                                                 daemon=True)
                self._renewer.start()

    def _renew_while_holding(self) -> None:
        """Extend every held lease each lease_s / 3; ends when nothing is held."""
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                if not self._held:
                    self._renewer = None
                    return
                for path in list(self._held):
                    if self._owns(path):
                        self._write(path, "inflight")
                    else:  # taken over after this process stalled past its lease
                        self._held.discard(path)

    def _remove_old_tokens(self) -> None:
        _remove_older_than(self._tokens.glob("*"), _TAKEOVER_TOKENS_KEPT_S)

    def _remove_old_done_logs(self) -> None:
        _remove_older_than(self.folder.glob("done-*"), DONE_LOGS_KEPT_S)


def _remove_older_than(paths, seconds: float) -> None:
    cutoff = time.time() - seconds
    for path in paths:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass
