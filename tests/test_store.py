import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import cot_row

from storage import SCHEMAS, CallRow, CotRow, ExampleRow, Store
from storage.location import MissingFilesystemError, locate

REPO = Path(__file__).resolve().parents[1]


def example(i: int, **changes) -> ExampleRow:
    row = ExampleRow(
        example_id=f"e{i}",
        split="train",
        input=f"question {i}",
        label="( 1.0 + 2.0 )",
        dataset="test",
        source=f"test.jsonl:{i}",
    )
    return replace(row, **changes)


def cot(i: int, **changes) -> CotRow:
    row = cot_row(f"e{i % 10}", i % 5, "(1 + 2)", "So 1 + 2 = 3. The answer is (1 + 2).")
    return replace(row, key=f"k{i}", call_id=f"c{i}", **changes)


def call(call_id: str, keys: tuple[str, ...], status: str, minutes: int = 0, **changes) -> CallRow:
    row = CallRow(
        call_id=call_id,
        kind="cot",
        example_id="e1",
        keys=keys,
        status=status,
        attempts=1,
        prompt_tokens=100,
        completion_tokens=50,
        cost_usd=0.001,
        latency_s=1.5,
        error=None if status == "ok" else "timeout",
        teacher_model="m",
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes),
    )
    return replace(row, **changes)


def count(store: Store, table: str) -> int:
    return store.fetch(f"SELECT count(*) FROM {table}")[1][0][0]


def test_rows_round_trip_through_parquet_and_duckdb(tmp_path):
    store = Store(str(tmp_path / "store"))
    written = [cot(1), cot(2, answer=None, rationale=None, parse_error="no 'The answer is' sentence")]
    store.append(written)
    columns, rows = store.fetch("SELECT * FROM cots ORDER BY key")
    read = [CotRow(**dict(zip(columns, row, strict=True))) for row in rows]
    assert read == written


def test_root_folder_is_created_on_first_write(tmp_path):
    root = tmp_path / "new" / "store"
    store = Store(str(root))
    assert not root.exists()
    assert count(store, "examples") == 0  # reading an absent store is an empty store
    store.append([example(1)])
    assert len(list((root / "examples").glob("part-*.parquet"))) == 1


def test_each_append_is_one_file_with_the_explicit_schema(tmp_path):
    store = Store(str(tmp_path))
    store.append([example(1), example(2)])
    store.append([example(3)])
    files = store.files("examples")
    assert len(files) == 2 and all(Path(f).name.startswith("part-") for f in files)
    assert pq.read_schema(files[0]).remove_metadata() == SCHEMAS["examples"]


def test_appending_nothing_writes_nothing(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.append([])
    assert not (tmp_path / "store").exists()


def test_one_append_takes_one_record_type(tmp_path):
    with pytest.raises(TypeError):
        Store(str(tmp_path)).append([example(1), cot(1)])


def test_duplicate_writes_never_count_twice_and_the_first_write_wins(tmp_path):
    store = Store(str(tmp_path))
    store.append([example(1, input="first"), example(2)])
    store.append([example(1, input="second")])
    store.append([example(1, input="third"), example(3)])
    assert store.fetch("SELECT example_id, input FROM examples ORDER BY 1")[1] == [
        ("e1", "first"),
        ("e2", "question 2"),
        ("e3", "question 3"),
    ]


def test_every_table_is_a_typed_view_even_when_empty(tmp_path):
    con = Store(str(tmp_path)).connect()
    try:
        for table, schema in SCHEMAS.items():
            assert con.sql(f"SELECT * FROM {table}").columns == schema.names
            assert con.sql(f"SELECT count(*) FROM {table}").fetchall() == [(0,)]
        assert con.sql("SELECT count(*) FROM rejects").fetchall() == [(0,)]
        assert con.sql("SELECT count(*) FROM failed_requests").fetchall() == [(0,)]
    finally:
        con.close()


def test_views_follow_appends_made_after_connecting(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(1)])
    con = store.connect()
    try:
        store.append([cot(2)])
        assert con.sql("SELECT count(*) FROM cots").fetchall() == [(2,)]
    finally:
        con.close()


def test_files_from_an_older_schema_read_with_nulls_for_new_columns(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(1)])
    old = pa.Table.from_pylist([{"key": "k-old", "example_id": "e1", "cot_index": 0, "text": "old"}])
    (tmp_path / "cots" / "part-00000000T000000000000Z-old.parquet").write_bytes(b"")
    pq.write_table(old, tmp_path / "cots" / "part-00000000T000000000000Z-old.parquet")
    rows = dict(store.fetch("SELECT key, teacher_model FROM cots")[1])
    assert rows == {"k1": "simulated", "k-old": None}


def test_a_compacted_store_records_which_parts_hold_each_key_once(tmp_path):
    store = Store(str(tmp_path))
    for i in range(6):
        store.append([cot(i)])
    assert store.checked_parts() == {}  # nothing recorded yet: every view deduplicates
    store.compact()
    checked = store.checked_parts()["cots"]
    names = {Path(path).name for path in store.files("cots")}
    assert checked.unique == names and checked.typed == names
    assert count(store, "cots") == 6


def test_a_write_retried_after_compaction_never_counts_twice_and_the_next_compaction_merges_it(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(i) for i in range(20)])  # one bounded part, kept as it is by compaction
    store.compact(part_rows=30)
    store.append([cot(3, text="the same key written again")])  # not in the record: its table deduplicates
    assert count(store, "cots") == 20
    assert store.fetch("SELECT text FROM cots WHERE key = 'k3'")[1] == [(cot(3).text,)]
    store.compact(part_rows=30)  # the two parts sharing k3 are merged; the record covers every part again
    checked = store.checked_parts()["cots"]
    assert checked.unique == {Path(path).name for path in store.files("cots")}
    assert count(store, "cots") == 20
    assert store.fetch("SELECT text FROM cots WHERE key = 'k3'")[1] == [(cot(3).text,)]


def test_parts_of_an_older_schema_are_recorded_unique_but_read_with_nulls_for_new_columns(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(i) for i in range(20)])
    old = pa.Table.from_pylist([{"key": f"k-old-{i}", "example_id": "e1", "cot_index": 0, "text": "old"}
                                for i in range(20)])
    pq.write_table(old, tmp_path / "cots" / "part-00000000T000000000000Z-old.parquet")
    store.compact(part_rows=30)
    checked = store.checked_parts()["cots"]
    assert "part-00000000T000000000000Z-old.parquet" in checked.unique - checked.typed
    assert store.fetch("SELECT count(*), count(teacher_model) FROM cots")[1] == [(40, 20)]


def test_an_unreadable_record_only_means_deduplicating(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(1)])
    store.append([cot(1, text="again")])
    (tmp_path / "_unique").mkdir()
    (tmp_path / "_unique" / "parts.json").write_text('{"cots": {"unique": ')
    assert store.checked_parts() == {}
    assert count(store, "cots") == 1


def test_a_half_written_temporary_file_is_invisible(tmp_path):
    store = Store(str(tmp_path))
    store.append([example(1)])
    # what a writer killed mid-write leaves behind
    (tmp_path / "examples" / ".tmp-deadbeef.parquet").write_bytes(b"PAR1\x00\x01 truncated")
    assert count(store, "examples") == 1
    assert store.compact() == {}  # one committed file: nothing to merge, the young temporary stays
    assert (tmp_path / "examples" / ".tmp-deadbeef.parquet").exists()


def test_compact_removes_temporaries_of_dead_writers(tmp_path):
    store = Store(str(tmp_path))
    store.append([example(1)])
    stale = tmp_path / "examples" / ".tmp-dead.parquet"
    stale.write_bytes(b"PAR1")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.compact()
    assert not stale.exists()


_WRITER = """
import sys, time
from storage import Store, CotRow
store, start, stop, text = Store(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "x" * int(sys.argv[4])
pause = float(sys.argv[5])
for i in range(start, stop):
    time.sleep(pause)
    store.append([CotRow(key=f"k{i}", example_id="e", cot_index=0, text=text, answer=None, rationale=None,
                         parse_error="test", finish_reason=None, teacher_model="m", prompt_version="v",
                         temperature=0.0, top_p=1.0, max_tokens=1, source="teacher", call_id=None)])
"""


def _writer(root: Path, start: int, stop: int, text_size: int = 10, pause_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    arguments = [str(root), str(start), str(stop), str(text_size), str(pause_s)]
    return subprocess.Popen([sys.executable, "-c", _WRITER, *arguments], env=env)


def test_a_writer_killed_with_sigkill_leaves_only_whole_files(tmp_path):
    writer = _writer(tmp_path, 0, 10_000_000, text_size=2_000_000)  # ~2 MB per file: slow enough to be cut
    deadline = time.monotonic() + 30
    while len(list((tmp_path / "cots").glob("part-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    committed = list((tmp_path / "cots").glob("part-*.parquet"))
    assert len(committed) >= 3
    for path in committed:
        assert pq.read_table(path).num_rows == 1
    assert count(Store(str(tmp_path)), "cots") == len(committed)


def test_two_processes_appending_at_once_lose_and_double_nothing(tmp_path):
    # keys 100..149 are written by both processes, like two runs racing for the same request
    writers = [_writer(tmp_path, 0, 150), _writer(tmp_path, 100, 250)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    store = Store(str(tmp_path))
    assert len(store.files("cots")) == 300
    assert count(store, "cots") == 250
    assert not list((tmp_path / "cots").glob(".tmp-*"))


def test_compact_merges_files_and_keeps_every_row_once(tmp_path):
    store = Store(str(tmp_path))
    for i in range(20):
        store.append([cot(i), cot(i + 100)])
    store.append([cot(5, text="a later duplicate")])
    before = store.fetch("SELECT * FROM cots ORDER BY key")
    assert store.compact() == {"cots": 21}
    assert len(store.files("cots")) == 1
    assert store.fetch("SELECT * FROM cots ORDER BY key") == before
    assert pq.read_table(store.files("cots")[0]).num_rows == 40
    assert store.compact() == {}


def _rows_per_part(store: Store, table: str) -> dict[str, int]:
    return {path: pq.read_metadata(path).num_rows for path in store.files(table)}


def test_compact_bounds_its_parts_so_a_damaged_part_loses_only_its_own_rows(tmp_path):
    store = Store(str(tmp_path / "store"))
    for i in range(25):
        store.append([cot(4 * i + j) for j in range(4)])
    assert store.compact(part_rows=30) == {"cots": 25}
    assert sorted(_rows_per_part(store, "cots").values()) == [10, 30, 30, 30]
    for damaged, rows in _rows_per_part(store, "cots").items():
        copy = tmp_path / f"copy-{Path(damaged).stem}"
        shutil.copytree(tmp_path / "store", copy)
        part = copy / "cots" / Path(damaged).name
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a truncated file
        damaged_store = Store(str(copy))
        damaged_store.quarantine([path for path, _ in damaged_store.corrupt_files()])
        assert count(damaged_store, "cots") == 100 - rows


def test_compact_never_rewrites_a_part_that_is_already_bounded(tmp_path):
    store = Store(str(tmp_path))
    for i in range(25):
        store.append([cot(4 * i + j) for j in range(4)])
    store.compact(part_rows=30)
    full = {path: os.stat(path).st_mtime_ns for path, rows in _rows_per_part(store, "cots").items() if rows == 30}
    assert store.compact(part_rows=30) == {}  # nothing new: nothing rewritten
    store.append([cot(200), cot(201)])
    store.append([cot(202)])
    assert store.compact(part_rows=30) == {"cots": 3}  # the 10-row part and the two new ones
    after = _rows_per_part(store, "cots")
    assert {path: os.stat(path).st_mtime_ns for path in full} == full and set(full) <= set(after)
    assert sorted(after.values()) == [13, 30, 30, 30]
    assert count(store, "cots") == 103


def test_compact_splits_a_part_larger_than_the_bound(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(i) for i in range(70)])  # one file, as an older compaction wrote them
    assert store.compact(part_rows=30) == {"cots": 1}
    assert sorted(_rows_per_part(store, "cots").values()) == [10, 30, 30]
    assert count(store, "cots") == 70


def test_compact_while_another_process_writes_and_a_reader_counts(tmp_path):
    store = Store(str(tmp_path))
    writer = _writer(tmp_path, 0, 300, pause_s=0.004)
    seen, errors, merges = [], [], []

    def read():
        while writer.poll() is None:
            try:
                seen.append(count(Store(str(tmp_path)), "cots"))
            except Exception as error:  # noqa: BLE001 - collected and asserted on below
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    while writer.poll() is None:
        merges.append(store.compact())
        time.sleep(0.02)
    reader.join()
    assert writer.returncode == 0
    assert errors == [], errors[:3]
    assert sum(1 for merged in merges if merged) >= 3, merges  # compaction really ran during the writes
    drops = [(a, b) for a, b in zip(seen, seen[1:]) if b < a]
    assert drops == []  # a count never goes down, not even mid-compaction
    store.compact()
    assert count(store, "cots") == 300 and len(store.files("cots")) == 1


def test_rejects_view_lists_unparseable_rows_with_their_reason(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(1), cot(2, answer=None, rationale=None, parse_error="truncated at max_tokens")])
    assert store.fetch("SELECT * FROM rejects")[1] == [
        ("cots", "k2", "e2", "truncated at max_tokens", "So 1 + 2 = 3. The answer is (1 + 2).")
    ]


def test_failed_requests_are_the_latest_failure_of_keys_still_missing(tmp_path):
    store = Store(str(tmp_path))
    store.append(
        [
            call("old", ("k1", "k2"), "failed", minutes=0),
            call("new", ("k1", "k2"), "failed", minutes=5),  # the same request failing again later
            call("answered", ("k3",), "failed", minutes=1),
            call("ok", ("k3",), "ok", minutes=2),
        ]
    )
    store.append([cot(3)])
    assert store.fetch("SELECT call_id FROM failed_requests")[1] == [("new",)]
    store.append([cot(1), cot(2)])
    assert store.fetch("SELECT call_id FROM failed_requests")[1] == []


def test_append_takes_a_few_milliseconds(tmp_path):
    store = Store(str(tmp_path))
    store.append([cot(0)])
    timings = []
    for i in range(200):
        started = time.perf_counter()
        store.append([cot(i)])
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.010


def test_local_roots_and_file_urls_map_to_the_local_filesystem(tmp_path):
    for root in (str(tmp_path / "s"), f"file://{tmp_path / 's'}"):
        location = locate(root)
        assert isinstance(location.filesystem, pafs.LocalFileSystem)
        assert location.path == location.url == (tmp_path / "s").as_posix()
        assert location.rename_into_place
    assert Store(str(tmp_path)).local_folder() == tmp_path


def test_relative_roots_are_anchored_at_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate("runs/x").path == (tmp_path / "runs" / "x").as_posix()


def test_object_store_urls_go_through_fsspec_without_rename(s3_env):
    s3 = locate("s3://bucket/runs/svamp/")
    assert type(s3.fsspec_filesystem).__name__ == "S3FileSystem" and s3.is_object_store
    assert (s3.path, s3.url, s3.rename_into_place) == ("bucket/runs/svamp", "s3://bucket/runs/svamp", False)
    assert Store("s3://bucket/runs").local_folder() is None


def test_a_gcs_store_without_gcsfs_names_the_extra_to_install():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(MissingFilesystemError, match=r"pip install 'mindsmirror\[gcs\]'"):
            locate("gs://bucket/runs")
    else:
        assert locate("gs://bucket/runs").url == "gs://bucket/runs"


def test_any_fsspec_url_round_trips(tmp_path):
    store = Store("memory://mindsmirror-test/round-trip")
    assert store.location.fsspec_filesystem is not None
    store.append([example(1), example(2)])
    store.append([example(2, input="duplicate"), example(3)])
    assert store.fetch("SELECT example_id, input FROM examples ORDER BY 1")[1] == [
        ("e1", "question 1"),
        ("e2", "question 2"),
        ("e3", "question 3"),
    ]
    assert store.compact() == {"examples": 2}
    assert count(store, "examples") == 3 and len(store.files("examples")) == 1


def test_a_store_on_a_real_s3_server_round_trips_without_a_duckdb_extension(s3_bucket):
    store = Store(f"{s3_bucket}/runs/svamp")
    store.append([example(1), example(2)])
    store.append([example(2, input="duplicate"), example(3)])
    assert store.fetch("SELECT example_id, input FROM examples ORDER BY 1")[1] == [
        ("e1", "question 1"),
        ("e2", "question 2"),
        ("e3", "question 3"),
    ]
    loaded = store.fetch("SELECT extension_name FROM duckdb_extensions() WHERE loaded")[1]
    assert ("httpfs",) not in loaded
