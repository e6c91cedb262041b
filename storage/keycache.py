"""Evaluation sample keys derived once per chain of thought, for plans that anti-join them in DuckDB.

An evaluation's key hashes its prompt, which holds the judged CoT's text: re-deriving a million of
them in Python on every plan costs tens of seconds. A key depends only on the judged CoT (whose own
key pins its question and text), the evaluation's index and the request's identity (endpoint, model,
prompt, sampling), so each is derived once and kept in
``<root>/_keys/evaluations-<identity>/part-*.parquet`` (cot_key, eval_index, key). No store view
reads these files; they are derived data, and deleting them costs one slow plan.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.queries.common import _run, _strings
from storage.store import Store

FOLDER = "_keys"
SCHEMA = pa.schema([("cot_key", pa.string()), ("eval_index", pa.int32()), ("key", pa.string())])


def _folder(identity: str) -> str:
    return f"{FOLDER}/evaluations-{identity}"


def _has_files(store: Store, identity: str) -> bool:
    selector = pafs.FileSelector(f"{store.location.path}/{_folder(identity)}", allow_not_found=True)
    return any(info.base_name.startswith("part-") for info in store.location.filesystem.get_file_info(selector))


def remember(store: Store, identity: str, rows: Iterable[tuple[str, int, str]]) -> None:
    """Keep (cot_key, eval_index, key) rows; best effort: a store that cannot take them is only slower."""
    rows = list(rows)
    if not rows:
        return
    cot_keys, indices, keys = (list(column) for column in zip(*rows))
    data = pa.table([cot_keys, indices, keys], schema=SCHEMA)
    fs, folder = store.location.filesystem, f"{store.location.path}/{_folder(identity)}"
    token = uuid.uuid4().hex
    final, temporary = f"{folder}/part-{token}.parquet", f"{folder}/.tmp-{token}.parquet"
    try:
        fs.create_dir(folder, recursive=True)
        if not store.location.rename_into_place:
            pq.write_table(data, final, filesystem=fs)
            return
        pq.write_table(data, temporary, filesystem=fs)
        fs.move(temporary, final)
    except OSError:
        try:
            fs.delete_file(temporary)
        except OSError:
            pass


def _with_cache(store: Store, identity: str, sql: str, params, tables: dict) -> pa.Table:
    """Run sql with the cached keys as `_cache` (an empty table when there are none yet)."""
    glob = f"{store.location.url}/{_folder(identity)}/part-*.parquet"
    cache = None if _has_files(store, identity) else SCHEMA.empty_table()

    def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
        if cache is None:
            con.read_parquet(glob).create_view("_cache")
        else:
            con.register("_cache", cache)
        return _run(con, sql, params, tables)

    return store.read(work)


# The stored, parseable CoTs among the judged keys: only those get evaluations.
_JUDGED = "SELECT c.key FROM cots c SEMI JOIN _judged j ON j.value = c.key WHERE c.parse_error IS NULL"


def uncached_cots(store: Store, identity: str, judged: Iterable[str], n_evals: int) -> list[str]:
    """Which of the `judged` CoT keys (stored and parseable) lack a cached key for an index < n_evals."""
    sql = f"""
        SELECT key FROM ({_JUDGED}) ANTI JOIN (
            SELECT cot_key FROM _cache WHERE eval_index < ? GROUP BY cot_key
            HAVING count(DISTINCT eval_index) = ?
        ) covered ON covered.cot_key = key
    """
    table = _with_cache(store, identity, sql, [n_evals, n_evals], {"_judged": _strings(judged)})
    return table.column("key").to_pylist()


def missing_evaluations(store: Store, identity: str, judged: Iterable[str], n_evals: int) -> dict[str, str]:
    """The cached evaluation keys (index < n_evals) of the `judged` CoTs (stored and parseable) that
    the evaluations table lacks, each with the key of the CoT it judges."""
    sql = f"""
        SELECT DISTINCT k.key, k.cot_key FROM _cache k SEMI JOIN ({_JUDGED}) c ON c.key = k.cot_key
        ANTI JOIN (SELECT key FROM evaluations) e ON e.key = k.key
        WHERE k.eval_index < ?
    """
    table = _with_cache(store, identity, sql, [n_evals], {"_judged": _strings(judged)})
    return dict(zip(table.column("key").to_pylist(), table.column("cot_key").to_pylist()))
