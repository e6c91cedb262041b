"""Benchmark: how many responses per second one process makes durable on an S3 server, against a
local folder, measured back to back in one process.

One response's durable write is what generation does once an answer arrives: its rows as one
Parquet part, then its call record as another (storage.Store.append, twice). "with claims" adds
the response's lease on S3 (create with If-None-Match, the done check, the done object, the lease's
read and removal) as a second run on the same store would need it.

The S3 server is moto's standalone server on 127.0.0.1 (the dev extra), so the numbers measure the
client side and a local round trip, not a cloud region's latency.

Run: python bench/s3_writes.py [--responses 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage import CallRow, CotRow, Store, open_claims  # noqa: E402


def _rows(index: int) -> tuple[list[CotRow], list[CallRow]]:
    call_id = uuid.uuid4().hex
    cot = CotRow(key=f"k{index}-{call_id}", example_id=f"e{index}", cot_index=0, text="1 + 1 = 2. The answer is 2.",
                 answer="2", rationale="1 + 1 = 2.", parse_error=None, finish_reason="stop",
                 teacher_model="bench", prompt_version="cot-v1", temperature=0.7, top_p=1.0, max_tokens=256,
                 source="teacher", call_id=call_id)
    call = CallRow(call_id=call_id, kind="cot", example_id=f"e{index}", keys=(cot.key,), status="ok", attempts=1,
                   prompt_tokens=100, completion_tokens=50, cost_usd=0.0001, latency_s=0.5, error=None,
                   teacher_model="bench")
    return [cot], [call]


def responses_per_second(root: str, responses: int, claims: bool = False) -> float:
    store = Store(root)
    leases = open_claims(root) if claims else None
    store.append(_rows(-1)[0])  # folders exist, connections are open
    started = time.perf_counter()
    for index in range(responses):
        rows, call = _rows(index)
        if leases is not None:
            leases.claim([rows[0].key])
        store.append(rows)
        store.append(call)
        if leases is not None:
            leases.done([rows[0].key])
    return responses / (time.perf_counter() - started)


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        time.sleep(0.2)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=200)
    args = parser.parse_args()
    server, url = _moto()
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as folder:
            local = responses_per_second(f"{folder}/store", args.responses)
            local_claims = responses_per_second(f"{folder}/claimed", args.responses, claims=True)
            s3 = responses_per_second("s3://bench/store", args.responses)
            s3_claims = responses_per_second("s3://bench/claimed", args.responses, claims=True)
    finally:
        server.terminate()
        server.wait()
    print(f"{args.responses} responses, one process, each: rows part + call part")
    print(f"local folder        {local:8.1f} responses/s")
    print(f"local + claims      {local_claims:8.1f} responses/s")
    print(f"S3 (moto)           {s3:8.1f} responses/s  ({s3 / local:.3f} x local)")
    print(f"S3 + claims         {s3_claims:8.1f} responses/s  ({s3_claims / local_claims:.3f} x local + claims)")


if __name__ == "__main__":
    main()
