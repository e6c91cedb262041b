"""Sample keys derived once, for plans that anti-join them against the store in DuckDB.

A sample key hashes its whole prompt: re-deriving 200,000 CoT keys and a million evaluation keys
in Python on every plan costs tens of seconds. A CoT key depends only on the request's identity
(endpoint, model, prompt version and template, sampling), its example's question and its index; an
evaluation key on the evaluation request's identity, the judged CoT (whose own key pins its question
and text) and its index. So each is derived once and kept per identity, in
``<root>/_keys/cots-<identity>/part-*.parquet`` (example_id, input_hash, cot_index, key) and
``<root>/_keys/evaluations-<identity>/part-*.parquet`` (cot_key, eval_index, key). No store view
reads these files; they are derived data, and deleting them costs one slow plan.

A plan runs three queries on one connection (see tasks.generation.plan; `attach` adds the kept
keys): which wanted examples have no kept CoT keys, which wanted CoT keys the store lacks, and, in
one pass over the kept evaluation keys, which of the stored CoTs' evaluations the store lacks and
which CoTs have no kept evaluation keys yet. Keys a plan derived but may not keep (a dry run writes
nothing) join the kept ones as `extra` tables.

The examples a plan of `generate` finds nothing missing for are remembered as settled:
``<root>/_keys/settled/<state>.json`` maps each example id to its input hash, where the state hashes
what the plan read besides the wanted examples (its key identities and counts and the name, size and
modification time of each part of `cots`, `evaluations` and the kept keys). Parts never change once
written and a new part gets a new name, so while no part is added, merged, moved away or overwritten
a settled example still lacks nothing, and the next plan reads the tables only for the examples that
are not settled (new examples, changed questions). An example's plan depends on nothing but its own
keys and rows, so the settled examples of one state only grow. Any change to the parts gives another
state, and a full plan.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage import arrow, derived
from storage.store import Store

FOLDER = derived.FOLDER
SETTLED_KIND = "settled"
SETTLED = f"{FOLDER}/{SETTLED_KIND}"
KEPT_SETTLED = 8  # settled markers kept: the newest states, a few plan identities sharing a store
COT_SCHEMA = pa.schema([("example_id", pa.string()), ("input_hash", pa.string()), ("cot_index", pa.int32()),
                        ("key", pa.string())])
EVAL_SCHEMA = pa.schema([("cot_key", pa.string()), ("eval_index", pa.int32()), ("key", pa.string())])
WANTED_SCHEMA = pa.schema([("example_id", pa.string()), ("input_hash", pa.string())])


def input_hash(text: str) -> str:
    """What a kept CoT key records of its question: a changed question never reuses its keys."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Identities:
    """The key cache folders of one plan: its CoT and evaluation request identities."""

    cots: str
    evaluations: str


def _folder(kind: str, identity: str) -> str:
    return f"{FOLDER}/{kind}-{identity}"


def remember(store: Store, kind: str, identity: str, rows: pa.Table) -> None:
    """Keep derived keys (COT_SCHEMA or EVAL_SCHEMA rows); best effort: a store that cannot take
    them is only slower."""
    if not rows.num_rows:
        return
    fs, folder = store.location.filesystem, f"{store.location.path}/{_folder(kind, identity)}"
    token = uuid.uuid4().hex
    final, temporary = f"{folder}/part-{token}.parquet", f"{folder}/.tmp-{token}.parquet"
    try:
        fs.create_dir(folder, recursive=True)
        if not store.location.rename_into_place:
            pq.write_table(rows, final, filesystem=fs)
            return
        pq.write_table(rows, temporary, filesystem=fs)
        fs.move(temporary, final)
    except OSError:
        try:
            fs.delete_file(temporary)
        except OSError:
            pass


def part_listing(store: Store, ids: Identities) -> list:
    """The name, size and modification time of each part a plan reads: `cots`, `evaluations` and the
    kept keys. Size and time too: a part overwritten in place (damaged) plans in full, so the plan
    reads it and says so, as before."""
    return derived.part_listing(store, ("cots", "evaluations", _folder("cots", ids.cots),
                                        _folder("evaluations", ids.evaluations)))


def plan_state(ids: Identities, n_cots: int, n_evals: int, listing: list) -> str:
    """A digest of the store as a plan reads it (see the module's docstring); listing: part_listing's."""
    return derived.name_of(ids.cots, ids.evaluations, n_cots, n_evals, listing)


def settled_examples(store: Store, state: str) -> dict[str, str]:
    """The examples (id: input_hash) a plan of this state found nothing missing for; {} when none."""
    value = derived.recall(store, SETTLED_KIND, state)
    examples = value.get("examples") if value is not None else None
    return examples if isinstance(examples, dict) else {}


def settle(store: Store, state: str, examples: dict[str, str]) -> None:
    """Remember that a plan of this state found nothing missing for these examples (best effort,
    like kept keys). Each example's plan is its own, so the examples settled before stay settled.

    A marker lists every settled example (~60 bytes each), and each change to the parts makes a new
    state: only the newest KEPT_SETTLED markers are kept (the other states' parts are gone, or belong
    to another plan identity on the same store, which at worst plans in full once)."""
    derived.remember(store, SETTLED_KIND, state, {"examples": examples})
    fs = store.location.filesystem
    try:
        markers = fs.get_file_info(pafs.FileSelector(f"{store.location.path}/{SETTLED}", allow_not_found=True))
        others = sorted((info for info in markers if info.base_name != f"{state}.json"),
                        key=lambda info: (info.mtime_ns or 0, info.base_name), reverse=True)
        for info in others[KEPT_SETTLED - 1:]:
            fs.delete_file(info.path)
    except OSError:
        pass


def cot_rows(rows: Iterable[tuple[str, str, int, str]]) -> pa.Table:
    """(example_id, input_hash, cot_index, key) tuples as a table to keep or join."""
    return _table(COT_SCHEMA, rows)


def eval_rows(rows: Iterable[tuple[str, int, str]]) -> pa.Table:
    """(cot_key, eval_index, key) tuples as a table to keep or join."""
    return _table(EVAL_SCHEMA, rows)


def wanted_rows(rows: Iterable[tuple[str, str]]) -> pa.Table:
    """(example_id, input_hash) of the examples a plan wants samples for."""
    return _table(WANTED_SCHEMA, rows)


def _table(schema: pa.Schema, rows: Iterable[tuple]) -> pa.Table:
    columns = list(zip(*rows)) or [()] * len(schema)
    return arrow.table(schema, columns)


def attach(con: duckdb.DuckDBPyConnection, store: Store, ids: Identities) -> None:
    """Create `_cot_kept` and `_eval_kept` on a store connection: the kept keys of these identities."""
    for kind, identity, schema, name in (("cots", ids.cots, COT_SCHEMA, "_cot_kept"),
                                         ("evaluations", ids.evaluations, EVAL_SCHEMA, "_eval_kept")):
        selector = pafs.FileSelector(f"{store.location.path}/{_folder(kind, identity)}", allow_not_found=True)
        if any(info.base_name.startswith("part-") for info in store.location.filesystem.get_file_info(selector)):
            con.read_parquet(f"{store.location.url}/{_folder(kind, identity)}/part-*.parquet").create_view(name)
        else:
            con.register(name, arrow.empty(schema))


def _query(con: duckdb.DuckDBPyConnection, sql: str, params, tables: dict[str, pa.Table]) -> pa.Table:
    """Run sql with the kept keys as `_cot_keys` and `_eval_keys`, each with its `extra` table
    (`_cot_extra`, `_eval_extra`: keys derived this plan) added."""
    views = []
    for name, schema in (("_cot", COT_SCHEMA), ("_eval", EVAL_SCHEMA)):
        tables = {f"{name}_extra": arrow.empty(schema), **tables}
        views.append(f"CREATE OR REPLACE TEMP VIEW {name}_keys AS SELECT * FROM {name}_kept "
                     f"UNION ALL BY NAME SELECT * FROM {name}_extra")

    def run(connection: duckdb.DuckDBPyConnection) -> pa.Table:
        for statement in views:
            connection.execute(statement)
        return connection.sql(sql, params=params).to_arrow_table()

    for name, table in tables.items():
        con.register(name, table)
    try:
        return run(con)
    finally:
        for name in tables:
            con.unregister(name)


# Whether a group's rows hold every index below $n (at most 64, as config allows), duplicates or not:
# one bit per index, cheaper than count(DISTINCT ...).
_EVERY_INDEX = "bit_or(1::HUGEINT << {index}::HUGEINT) = (1::HUGEINT << $n::HUGEINT) - 1"

def uncached_examples(con: duckdb.DuckDBPyConnection, wanted: pa.Table, n_cots: int) -> list[str]:
    """The wanted examples (WANTED_SCHEMA) without a kept CoT key for every index < n_cots."""
    sql = f"""
        SELECT w.example_id FROM _wanted w ANTI JOIN (
            SELECT example_id, input_hash FROM _cot_keys WHERE cot_index < $n GROUP BY ALL
            HAVING {_EVERY_INDEX.format(index="cot_index")}
        ) k ON k.example_id = w.example_id AND k.input_hash = w.input_hash
    """
    table = _query(con, sql, {"n": n_cots}, {"_wanted": wanted})
    return table.column("example_id").to_pylist()


# The kept CoT keys (index < $n_cots) of the wanted examples, and those of them stored and parseable.
_WANTED_COTS = """
WITH wanted_cots AS (
    SELECT DISTINCT k.example_id, k.key FROM _cot_keys k
    SEMI JOIN _wanted w ON w.example_id = k.example_id AND w.input_hash = k.input_hash
    WHERE k.cot_index < $n_cots
),
judged AS (SELECT c.key FROM cots c SEMI JOIN wanted_cots w ON w.key = c.key WHERE c.parse_error IS NULL)
"""


def missing_cots(con: duckdb.DuckDBPyConnection, wanted: pa.Table, n_cots: int, extra: pa.Table) -> dict[str, str]:
    """The wanted CoT keys (kept, or derived this plan: `extra`) the store lacks, each with its example id."""
    sql = _WANTED_COTS + "SELECT w.key, w.example_id FROM wanted_cots w ANTI JOIN cots c ON c.key = w.key"
    table = _query(con, sql, {"n_cots": n_cots}, {"_wanted": wanted, "_cot_extra": extra})
    return dict(zip(table.column("key").to_pylist(), table.column("example_id").to_pylist()))


def judged_evaluations(con: duckdb.DuckDBPyConnection, wanted: pa.Table, n_cots: int, n_evals: int,
                       cot_extra: pa.Table) -> tuple[dict[str, str], list[str]]:
    """In one pass over the kept evaluation keys (index < n_evals) of the stored, parseable wanted
    CoTs: those the evaluations table lacks, each with the key of the CoT it judges, and the CoTs
    without a kept key for every index (whose keys the caller derives)."""
    sql = _WANTED_COTS + f""",
        kept AS (
            SELECT k.cot_key, k.eval_index, k.key FROM _eval_keys k SEMI JOIN judged j ON j.key = k.cot_key
            WHERE k.eval_index < $n
        ),
        covered AS (SELECT cot_key FROM kept GROUP BY cot_key HAVING {_EVERY_INDEX.format(index="eval_index")})
        SELECT 'unjudged' AS what, j.key AS cot_key, NULL AS key FROM judged j ANTI JOIN covered c ON c.cot_key = j.key
        UNION ALL
        SELECT DISTINCT 'missing', k.cot_key, k.key FROM kept k ANTI JOIN evaluations e ON e.key = k.key
    """
    rows = _query(con, sql, {"n_cots": n_cots, "n": n_evals}, {"_wanted": wanted, "_cot_extra": cot_extra})
    what, cot_keys, keys = (rows.column(name).to_pylist() for name in ("what", "cot_key", "key"))
    missing = {key: cot for kind, cot, key in zip(what, cot_keys, keys) if kind == "missing"}
    return missing, sorted(cot for kind, cot in zip(what, cot_keys) if kind == "unjudged")
