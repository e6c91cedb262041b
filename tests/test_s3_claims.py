"""Claims on an s3:// store, against a real S3 server: the semantics of local claims, built on
conditional writes (If-None-Match: * to create, If-Match: <etag> to renew or take over)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import boto3
from conftest import cot_row

from storage import Store, open_claims
from storage.claims import digest
from storage.s3_claims import S3Claims

KEYS = ["e1-c0", "e1-c1", "e1-c2"]


def _stored(key: str):
    return dataclasses.replace(cot_row("e1", int(key[-1]), "2", "1 + 1 = 2."), key=key)


def _objects(bucket: str, prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket.removeprefix("s3://"), Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _lease(bucket: str, keys=KEYS) -> dict:
    body = boto3.client("s3").get_object(Bucket=bucket.removeprefix("s3://"), Key=f"runs/_claims/{digest(keys)}")
    return json.loads(body["Body"].read())


def _put_lease_of_another_host(bucket: str, expires_in_s: float) -> None:
    now = time.time()
    boto3.client("s3").put_object(
        Bucket=bucket.removeprefix("s3://"), Key=f"runs/_claims/{digest(KEYS)}",
        Body=json.dumps({"state": "inflight", "owner": "elsewhere", "host": "other-host",
                         "machine": "other-host/boot/ns", "pid": 1, "renewed": now, "expires": now + expires_in_s}))


def test_an_s3_store_gets_s3_claims_and_a_request_is_claimed_once(s3_bucket):
    root = f"{s3_bucket}/runs"
    claims = open_claims(root)
    assert isinstance(claims, S3Claims)
    assert claims.claim(KEYS)
    assert not claims.claim(list(reversed(KEYS)))  # the same request, whatever the key order
    assert not open_claims(root).claim(KEYS)  # nor by another run
    held = _lease(s3_bucket)
    assert held["owner"] == claims.owner and held["expires"] > time.time()
    claims.release(KEYS)
    assert _objects(s3_bucket, "runs/_claims/") == []
    assert open_claims(root).claim(KEYS)  # released: claimable again


def test_a_done_request_is_skipped_while_stored_and_its_lease_is_gone(s3_bucket):
    root = f"{s3_bucket}/runs"
    claims, planned_meanwhile = open_claims(root), open_claims(root)
    assert claims.claim(KEYS)
    Store(root).append([_stored(key) for key in KEYS])
    claims.done(KEYS)
    assert _objects(s3_bucket, "runs/_claims/") == [f"runs/_claims/done/{digest(KEYS)}"]
    assert not planned_meanwhile.claim(KEYS)
    assert _objects(s3_bucket, "runs/_claims/") == [f"runs/_claims/done/{digest(KEYS)}"]


def test_a_done_object_never_hides_samples_missing_from_the_store(s3_bucket):
    root = f"{s3_bucket}/runs"
    Store(root).append([_stored(KEYS[0])])  # two of the three samples were lost
    claims = open_claims(root)
    assert claims.claim(KEYS)
    claims.done(KEYS)
    rerun = open_claims(root)
    assert rerun.claim(KEYS)
    assert _lease(s3_bucket)["owner"] == rerun.owner


def test_a_live_lease_of_another_host_is_respected_and_an_expired_one_taken_over(s3_bucket):
    claims = open_claims(f"{s3_bucket}/runs")
    _put_lease_of_another_host(s3_bucket, expires_in_s=30)
    assert not claims.claim(KEYS)
    _put_lease_of_another_host(s3_bucket, expires_in_s=-1)
    assert claims.claim(KEYS)
    assert _lease(s3_bucket)["owner"] == claims.owner


def test_of_two_runs_taking_over_one_expired_lease_only_the_first_write_lands(s3_bucket):
    root = f"{s3_bucket}/runs"
    first, second = open_claims(root), open_claims(root)
    _put_lease_of_another_host(s3_bucket, expires_in_s=-1)
    _, stale_etag, _ = second._get(f"runs/_claims/{digest(KEYS)}")  # both read the expired lease
    assert first.claim(KEYS)
    assert second._put(f"runs/_claims/{digest(KEYS)}", b"{}", IfMatch=stale_etag) is None
    assert not second.claim(KEYS)
    assert _lease(s3_bucket)["owner"] == first.owner


def test_a_live_owner_renews_its_lease_and_lets_go_of_one_taken_over(s3_bucket):
    root = f"{s3_bucket}/runs"
    owner = S3Claims(root, lease_s=0.6)
    assert owner.claim(KEYS)
    time.sleep(1.5)  # over two lease lengths: without renewal it would have expired
    assert not S3Claims(root, lease_s=0.6).claim(KEYS)
    assert _lease(s3_bucket)["expires"] > time.time()
    _put_lease_of_another_host(s3_bucket, expires_in_s=30)  # taken over while this run stalled
    time.sleep(0.5)
    assert _lease(s3_bucket)["owner"] == "elsewhere"  # the renewal's If-Match failed: not overwritten
    owner.release(KEYS)
    assert _lease(s3_bucket)["owner"] == "elsewhere"  # and a release never removes another run's lease


def test_two_runs_racing_for_the_same_requests_each_win_a_request_once(s3_bucket):
    root = f"{s3_bucket}/runs"
    runs = [open_claims(root), open_claims(root)]
    requests = [[f"e{i}-c0", f"e{i}-c1"] for i in range(40)]
    won: list[list[int]] = [[], []]

    def race(run: int) -> None:
        for index, keys in enumerate(requests):
            if runs[run].claim(keys):
                won[run].append(index)

    threads = [threading.Thread(target=race, args=(run,)) for run in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won[0] + won[1]) == list(range(40))  # every request claimed, none by both
