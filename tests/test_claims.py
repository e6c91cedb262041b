"""Claims: one marker per teacher request, so runs sharing a local store never pay twice."""

from __future__ import annotations

import json
import subprocess
import sys

from storage.claims import Claims

KEYS = ["e1-c0", "e1-c1", "e1-c2"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _marker(claims: Claims, keys=KEYS):
    return claims._path(keys)


def test_a_request_is_claimed_once_while_its_owner_lives(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    assert not claims.claim(list(reversed(KEYS)))  # the same request, whatever the key order
    assert json.loads(_marker(claims).read_text())["state"] == "inflight"


def test_a_released_request_can_be_claimed_again_and_a_done_one_never(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    claims.release(KEYS)
    assert claims.claim(KEYS)
    claims.done(KEYS)
    assert not claims.claim(KEYS)


def test_a_claim_left_in_flight_by_a_killed_process_is_taken_over(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    marker = json.loads(_marker(claims).read_text())
    _marker(claims).write_text(json.dumps({**marker, "pid": _dead_pid()}))
    assert claims.claim(KEYS)
    assert not claims.claim(KEYS)  # and now it is ours again


def test_a_torn_or_empty_marker_is_taken_over(tmp_path):
    claims = Claims(str(tmp_path))
    for content in ("", '{"state": "infl'):
        _marker(claims).write_text(content)
        assert claims.claim(KEYS)


def test_claiming_leaves_no_temporary_files(tmp_path):
    claims = Claims(str(tmp_path))
    claims.claim(KEYS)
    claims.claim(KEYS)
    claims.done(KEYS)
    assert [path.name for path in claims.folder.iterdir()] == [_marker(claims).name]


def test_object_store_urls_have_no_claims(tmp_path):
    claims = Claims("s3://bucket/runs/svamp")
    assert claims.folder is None and claims.claim(KEYS) and claims.claim(KEYS)
