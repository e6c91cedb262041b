"""Claims: leases on teacher requests, so live runs sharing a local store never pay twice, while the
store, not a marker, decides what is missing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import cot_row

from storage import Store
from storage.claims import DONE_LOGS_KEPT_S, ClaimsUnavailable, open_claims
from storage.claims import LocalClaims as Claims

KEYS = ["e1-c0", "e1-c1", "e1-c2"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _stored(key: str):
    return dataclasses.replace(cot_row("e1", int(key[-1]), "2", "1 + 1 = 2."), key=key)


def _marker(claims: Claims, keys=KEYS):
    return claims._path(keys)


def _lease_of_another_host(claims: Claims, expires_in_s: float) -> None:
    """A lease held by a worker elsewhere: its pid means nothing here, only its expiry does."""
    now = time.time()
    _marker(claims).write_text(json.dumps({
        "state": "inflight", "owner": "elsewhere", "host": "other-host", "machine": "other-host/boot/ns",
        "pid": _dead_pid(), "renewed": now, "expires": now + expires_in_s,
    }))


def test_a_request_is_claimed_once_while_its_owner_lives(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    assert not claims.claim(list(reversed(KEYS)))  # the same request, whatever the key order
    assert not Claims(str(tmp_path)).claim(KEYS)  # nor by another run
    marker = json.loads(_marker(claims).read_text())
    assert marker["state"] == "inflight" and marker["owner"] == claims.owner
    assert marker["expires"] > time.time()


def test_a_released_request_can_be_claimed_again(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    claims.release(KEYS)
    assert claims.claim(KEYS)


def test_a_done_request_is_skipped_while_its_samples_are_stored(tmp_path):
    store = Store(str(tmp_path))
    claims, planned_meanwhile = Claims(str(tmp_path)), Claims(str(tmp_path))
    assert claims.claim(KEYS)
    store.append([_stored(key) for key in KEYS])
    claims.done(KEYS)
    assert not planned_meanwhile.claim(KEYS)
    assert not Claims(str(tmp_path)).claim(KEYS)


def test_a_stored_answer_leaves_no_lease_only_a_line_in_its_runs_done_log(tmp_path):
    Store(str(tmp_path)).append([_stored(key) for key in KEYS])
    claims = Claims(str(tmp_path))
    for i in range(50):
        assert claims.claim([f"{key}-{i}" for key in KEYS])
        claims.done([f"{key}-{i}" for key in KEYS])
    assert [path.name for path in claims.folder.iterdir() if path.is_file()] == [f"done-{claims.owner}"]
    assert len((claims.folder / f"done-{claims.owner}").read_text().splitlines()) == 50


def test_done_logs_go_a_week_after_their_last_line(tmp_path):
    old, recent = Claims(str(tmp_path)), Claims(str(tmp_path))
    for claims, keys in ((old, KEYS), (recent, ["e2-c0"])):
        claims.claim(keys)
        claims.done(keys)
    week_ago = time.time() - DONE_LOGS_KEPT_S - 60
    os.utime(old.folder / f"done-{old.owner}", (week_ago, week_ago))
    Claims(str(tmp_path))
    assert sorted(path.name for path in old.folder.glob("done-*")) == [f"done-{recent.owner}"]


def test_a_done_marker_never_hides_samples_missing_from_the_store(tmp_path):
    store = Store(str(tmp_path))
    store.append([_stored(KEYS[0]), _stored(KEYS[1])])  # the third sample's row was lost
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    claims.done(KEYS)
    rerun = Claims(str(tmp_path))
    assert rerun.claim(KEYS)
    assert json.loads(_marker(rerun).read_text())["owner"] == rerun.owner
    assert not Claims(str(tmp_path)).claim(KEYS)  # and a third run now meets the rerun's live lease


def test_a_claim_left_in_flight_by_a_killed_process_here_is_taken_over_at_once(tmp_path):
    claims = Claims(str(tmp_path))
    assert claims.claim(KEYS)
    marker = json.loads(_marker(claims).read_text())
    _marker(claims).write_text(json.dumps({**marker, "owner": "killed", "pid": _dead_pid()}))
    assert claims.claim(KEYS)
    assert not Claims(str(tmp_path)).claim(KEYS)  # and now it is ours


def test_a_live_lease_of_another_host_is_respected(tmp_path):
    claims = Claims(str(tmp_path))
    _lease_of_another_host(claims, expires_in_s=30)
    assert not claims.claim(KEYS)  # its pid is not running here, but that says nothing about there


def test_the_expired_lease_of_a_dead_owner_on_another_host_is_taken_over(tmp_path):
    claims = Claims(str(tmp_path))
    _lease_of_another_host(claims, expires_in_s=-1)
    assert claims.claim(KEYS)
    assert json.loads(_marker(claims).read_text())["owner"] == claims.owner


def test_a_live_owner_renews_its_lease_past_expiry(tmp_path):
    owner = Claims(str(tmp_path), lease_s=0.3)
    assert owner.claim(KEYS)
    time.sleep(1.0)  # three lease lengths: without renewal it would have expired
    assert not Claims(str(tmp_path), lease_s=0.3).claim(KEYS)
    assert json.loads(_marker(owner).read_text())["expires"] > time.time()
    owner.done(KEYS)
    time.sleep(0.4)
    assert not _marker(owner).exists()  # removed once stored, and renewal stopped with the lease


def test_of_two_runs_taking_over_one_expired_lease_only_one_wins(tmp_path):
    first, second = Claims(str(tmp_path)), Claims(str(tmp_path))
    _lease_of_another_host(first, expires_in_s=-1)
    stale = _marker(first).read_bytes()
    assert first.claim(KEYS)
    _marker(first).write_bytes(stale)  # the second run read the same expired lease
    assert not second.claim(KEYS)


def test_a_torn_or_empty_marker_is_taken_over(tmp_path):
    claims = Claims(str(tmp_path))
    for content in ("", '{"state": "infl'):
        _marker(claims).write_text(content)
        assert claims.claim(KEYS)


def test_a_release_never_removes_a_lease_taken_over_by_another_run(tmp_path):
    stalled, taker = Claims(str(tmp_path)), Claims(str(tmp_path))
    assert stalled.claim(KEYS)
    marker = json.loads(_marker(stalled).read_text())
    _marker(stalled).write_text(json.dumps({**marker, "expires": time.time() - 1}))
    assert taker.claim(KEYS)
    stalled.release(KEYS)
    assert json.loads(_marker(taker).read_text())["owner"] == taker.owner


def test_claiming_leaves_no_temporary_files(tmp_path):
    claims = Claims(str(tmp_path))
    claims.claim(KEYS)
    claims.claim(KEYS)
    claims.release(KEYS)
    assert [path.name for path in claims.folder.iterdir() if path.is_file()] == []


def test_a_url_store_without_an_atomic_create_has_no_claims_and_says_what_to_use():
    with pytest.raises(ClaimsUnavailable, match=r"store\.path to a local folder or an s3:// URL"):
        open_claims("memory://bucket/runs/svamp")
