"""Claims on an s3:// store, with the semantics of local claims (storage.claims) built on S3's
conditional writes: a lease is created with `If-None-Match: *` (exactly one creator wins) and renewed
or taken over with `If-Match: <the ETag read>` (exactly one of several takers wins; a renewal fails
once another run took the lease over).

Layout under the store: `_claims/<hash>` is a request's lease (JSON, as locally) and
`_claims/done/<hash>` an empty object written once its answer is stored, before the lease is
removed: a run that planned the same request earlier claims it afresh, finds the done object and
skips it while the store holds every sample. Done objects older than a week are removed when a run
starts, as local done logs are.

Credentials and endpoint come from boto3's usual chain (AWS_* variables, AWS_ENDPOINT_URL, profiles).
Any S3 error other than a lost precondition is raised as OSError, as a failing local disk would be.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

from storage.claims import DONE_LOGS_KEPT_S, LEASE_S, all_stored, digest, lease, replaceable
from storage.location import locate

log = logging.getLogger(__name__)

# What S3 (and compatible servers) answer when a conditional write loses.
_LOST = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Claims:
    remote = True

    def __init__(self, root: str, lease_s: float = LEASE_S):
        import boto3

        self.root = root
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex
        self.bucket, _, prefix = locate(root).path.partition("/")
        self.prefix = f"{prefix}/_claims" if prefix else "_claims"
        self._s3 = boto3.client("s3")
        self._held: dict[str, str] = {}  # lease object -> the ETag of this run's last write
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._check_conditional_writes()
        self._remove_old_done()

    def _lease(self, keys: Sequence[str]) -> str:
        return f"{self.prefix}/{digest(keys)}"

    def _done(self, keys: Sequence[str]) -> str:
        return f"{self.prefix}/done/{digest(keys)}"

    # ---- S3 calls, with errors as OSError ------------------------------------------------------

    def _call(self, operation: str, **arguments):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._s3, operation)(Bucket=self.bucket, **arguments)
        except ClientError as error:
            if _code(error) in _LOST | _MISSING:
                raise
            raise OSError(f"claims on {self.root}: {operation} failed ({_code(error)})") from None
        except BotoCoreError as error:
            raise OSError(f"claims on {self.root}: {operation} failed ({type(error).__name__})") from None

    def _put(self, key: str, body: bytes, **condition) -> str | None:
        """Write `key` if `condition` holds; its new ETag, or None when another run won."""
        from botocore.exceptions import ClientError

        try:
            return self._call("put_object", Key=key, Body=body, **condition)["ETag"]
        except ClientError as error:
            if _code(error) in _LOST | _MISSING:
                return None
            raise

    def _get(self, key: str) -> tuple[dict | None, str, float] | None:
        """(parsed lease or None if unreadable, its ETag, when it was written); None if it is gone."""
        from botocore.exceptions import ClientError

        try:
            answer = self._call("get_object", Key=key)
        except ClientError:
            return None
        raw = answer["Body"].read()
        try:
            held = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            held = None
        return (held if isinstance(held, dict) else None), answer["ETag"], answer["LastModified"].timestamp()

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("head_object", Key=key)
        except ClientError:
            return False
        return True

    def _check_conditional_writes(self) -> None:
        """Refuse a server that ignores If-None-Match (an older S3-compatible one): there every
        run would win every lease, and two runs would pay twice."""
        from storage.claims import ClaimsUnavailable

        probe = f"{self.prefix}/probe-{self.owner}"
        try:
            self._put(probe, b"", IfNoneMatch="*")
            ignored = self._put(probe, b"", IfNoneMatch="*") is not None
        finally:
            self._call("delete_object", Key=probe)
        if ignored:
            raise ClaimsUnavailable(
                f"the S3 server of {self.root} ignores conditional writes (If-None-Match), which claims need "
                "so that two runs never pay twice: use a server that supports them (AWS S3, MinIO, ...)")

    # ---- the claims interface ------------------------------------------------------------------

    def claim(self, keys: Sequence[str]) -> bool:
        """True if this process may send the request for these keys."""
        key = self._lease(keys)
        etag = self._put(key, lease(self.owner, self.lease_s), IfNoneMatch="*")
        if etag is None:
            etag = self._take_over(key, keys)
            if etag is None:
                return False
        with self._lock:
            self._held[key] = etag
        if self._exists(self._done(keys)) and all_stored(self.root, keys):  # stored since this run planned
            self._release_owned(key)
            return False
        self._start_renewing()
        return True

    def _take_over(self, key: str, keys: Sequence[str]) -> str | None:
        found = self._get(key)
        if found is None:
            return None  # released this instant: its owner's retry may claim it again
        held, etag, written_at = found
        if not replaceable(held, self.owner, written_at, self.lease_s, lambda: all_stored(self.root, keys)):
            return None
        return self._put(key, lease(self.owner, self.lease_s), IfMatch=etag)

    def done(self, keys: Sequence[str]) -> None:
        """The answer is stored: write its done object, then remove the lease (in this order, so a
        run that claims it the moment the lease goes finds the done object)."""
        self._call("put_object", Key=self._done(keys), Body=b"")
        self._release_owned(self._lease(keys))

    def release(self, keys: Sequence[str]) -> None:
        self._release_owned(self._lease(keys))

    def _release_owned(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)
            found = self._get(key)
            if found is not None and (found[0] is None or found[0].get("owner") == self.owner):
                self._call("delete_object", Key=key)  # never a lease another run took over

    # ---- renewal -------------------------------------------------------------------------------

    def _start_renewing(self) -> None:
        with self._lock:
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_while_holding, name="s3-claims-renewer",
                                                 daemon=True)
                self._renewer.start()

    def _renew_while_holding(self) -> None:
        """Extend every held lease each lease_s / 3 (If-Match: a lease taken over is let go);
        ends when nothing is held."""
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                if not self._held:
                    self._renewer = None
                    return
                for key, etag in list(self._held.items()):
                    try:
                        renewed = self._put(key, lease(self.owner, self.lease_s), IfMatch=etag)
                    except OSError as error:  # the lease may run out; a later renewal may still land
                        log.warning("could not renew a lease: %s", error)
                        continue
                    if renewed is None:  # taken over after this process stalled past its lease
                        del self._held[key]
                    else:
                        self._held[key] = renewed

    def _remove_old_done(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        cutoff = datetime.now(timezone.utc).timestamp() - DONE_LOGS_KEPT_S
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/done/")
        try:
            for page in pages:
                old = [{"Key": item["Key"]} for item in page.get("Contents", [])
                       if item["LastModified"].timestamp() < cutoff]
                if old:
                    self._call("delete_objects", Delete={"Objects": old, "Quiet": True})
        except (OSError, BotoCoreError, ClientError) as error:  # only tidying: the run goes on
            log.warning("could not remove old done objects: %s", type(error).__name__)
