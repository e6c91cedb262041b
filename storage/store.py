"""The store: append-only Parquet files per table, read through DuckDB views.

Layout: ``<root>/<table>/part-<utc-ts>-<uuid>.parquet``. Every file is written under a temporary
name (``.tmp-...``, which no reader's glob matches) and renamed into place, so a writer killed
mid-write leaves at worst an ignored temporary file. File names are unique per write, so any number
of processes may append to one store at once. Views keep one row per primary key, so a row written
twice (a retried write, compaction between its write and its delete) never counts twice: the first
written wins for what the teacher was paid for, the newest for what evaluation re-scores
(predictions and results of a retrained checkpoint at the same path).

Deduplicating means a window over every row of a table, the main cost of reading a large store. So
compaction also checks which parts hold each key at most once between them and lists them in
``<root>/_unique/parts.json``; a connection whose parts are all listed there reads them without the
window. Parts never change once written, so such a list stays true while its files exist, whoever
wrote it and however old it is; a part it does not list sends the table back to the window.

A part that cannot be read raises CorruptFileError naming it; `quarantine` moves such parts to
``<root>/_quarantine/<table>/`` so the rest of the store reads again.

The root is a local folder or a URL (storage.location): ``s3://``, ``gs://`` and any other fsspec
scheme are written through fsspec and read by DuckDB through the same filesystem, registered with it.
Object stores publish an upload only once it completes, so there parts are written in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.location import locate, machine_folder
from storage.records import PRIMARY_KEYS, SCHEMAS, to_arrow

# A temporary file older than this belongs to a writer that died: a single append takes
# milliseconds, so an hour leaves a wide margin before compact() removes it.
_STALE_TMP_S = 3600
# Rows per part after compaction: a damaged part loses at most this many rows (a rerun buys them
# again), and a store of N rows reads N / PART_ROWS files or more.
PART_ROWS = 10_000
_READ_ATTEMPTS = 8  # back-to-back compactions on a loaded machine can win several races in a row

# Tables whose rows are re-written for the same key on purpose: re-evaluating a retrained
# checkpoint must replace its older scores. Every other table keeps its first row (a paid answer).
NEWEST_WINS = frozenset({"predictions", "results"})
QUARANTINE = "_quarantine"
UNIQUE = "_unique/parts.json"  # per table, the parts that hold no key twice between them (CheckedParts)

T = TypeVar("T")
_Connection = Callable[[], duckdb.DuckDBPyConnection]  # the connection, opened on first call


class CorruptFileError(ValueError):
    """Stored Parquet parts that cannot be read; the message names the first and the fix."""

    def __init__(self, root: str, corrupt: Sequence[tuple[str, str]]):
        self.paths = [path for path, _ in corrupt]
        path, reason = corrupt[0]
        more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
        super().__init__(
            f"corrupt Parquet file {path}{more}: {reason}; run `mindsmirror repair CONFIG` to move it to "
            f"{root.rstrip('/')}/{QUARANTINE}/ and see which requests a rerun of generate will buy again"
        )


@dataclass(frozen=True)
class CheckedParts:
    """What compaction found of a table's parts: which hold no key twice between them, and which of
    those hold exactly this code's schema (for another schema the record's `typed` is ignored)."""

    unique: frozenset[str] = frozenset()
    typed: frozenset[str] = frozenset()

    @classmethod
    def from_record(cls, table: str, entry: dict) -> CheckedParts:
        typed = entry["typed"] if entry.get("schema") == _fingerprint(SCHEMAS[table]) else []
        return cls(frozenset(entry["unique"]), frozenset(typed) & frozenset(entry["unique"]))

    def record(self, table: str) -> dict:
        return {"unique": sorted(self.unique), "typed": sorted(self.typed), "schema": _fingerprint(SCHEMAS[table])}


def _fingerprint(schema: pa.Schema) -> str:
    return hashlib.sha256(schema.to_string(show_schema_metadata=False).encode()).hexdigest()[:16]


def _order(table: str, *columns: str) -> str:
    """The ORDER BY of a table's deduplication: which of several rows with one key is kept."""
    direction = " DESC" if table in NEWEST_WINS else ""
    return ", ".join(f"{column}{direction}" for column in columns)


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
              pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ", pa.list_(pa.string()): "VARCHAR[]"}


def _empty_select(schema: pa.Schema) -> str:
    """A query with the schema's columns and no rows. In SQL, not a registered Arrow table: DuckDB
    imports pandas (when installed, ~0.3 s) on the first registration."""
    return "SELECT " + ", ".join(f"NULL::{_SQL_TYPES[f.type]} AS {_quote(f.name)}" for f in schema) + " WHERE false"


class Store:
    """Append rows, read them back through DuckDB. Cheap to construct; holds no connection."""

    def __init__(self, root: str):
        self.root = str(root)
        self.location = locate(self.root)
        self._made_dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def local_folder(self) -> Path | None:
        """The root as a local folder, or None when the store lives behind a URL."""
        if isinstance(self.location.filesystem, pafs.LocalFileSystem):
            return Path(self.location.path)
        return None

    def machine_state(self, what: str) -> Path:
        """A local folder for `what` of this store that only this machine needs: ``<root>/_<what>``
        for a local store, a folder of this machine (storage.location.machine_folder) for a URL."""
        folder = self.local_folder()
        return folder / f"_{what}" if folder is not None else machine_folder(self.root, what)

    # ---- writing ---------------------------------------------------------------------------

    def append(self, rows: Sequence) -> None:
        """Write rows of one record type as one new Parquet file; no-op for no rows."""
        rows = list(rows)
        if not rows:
            return
        table, data = to_arrow(rows)
        self._write(table, data)

    def _write(self, table: str, data: pa.Table) -> str:
        fs = self.location.filesystem
        folder = f"{self.location.path}/{table}"
        token = uuid.uuid4().hex
        final = f"{folder}/part-{_utc_stamp()}-{token}.parquet"
        if not self.location.rename_into_place:
            try:
                self._make_dir(folder)
                pq.write_table(data, final, filesystem=fs)
            except OSError:
                raise
            except Exception as error:  # an SDK's own error (a dropped connection): still a failed write
                raise OSError(f"{type(error).__name__}: {error}") from error
            return final
        self._make_dir(folder)
        temporary = f"{folder}/.tmp-{token}.parquet"
        try:
            pq.write_table(data, temporary, filesystem=fs)
            fs.move(temporary, final)
        except BaseException:
            _delete_quietly(fs, temporary)
            raise
        return final

    def _make_dir(self, folder: str) -> None:
        if folder not in self._made_dirs:
            self.location.filesystem.create_dir(folder, recursive=True)
            self._made_dirs.add(folder)

    # ---- reading ---------------------------------------------------------------------------

    def files(self, table: str) -> list[str]:
        """The table's committed Parquet files (paths inside the filesystem), oldest name first."""
        return [info.path for info in self._listing(table) if _is_part(info)]

    def _listing(self, table: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(f"{self.location.path}/{table}", allow_not_found=True)
        return sorted(self.location.filesystem.get_file_info(selector), key=lambda info: info.path)

    def _url(self, table: str, name: str) -> str:
        return f"{self.location.url}/{table}/{name}"

    def connect(self, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        """A fresh in-memory DuckDB with one deduplicating view per table plus `rejects` and
        `failed_requests`. A table whose parts are all known to hold each key once (see
        `checked_parts`) reads exactly the parts listed at connect time, without deduplicating;
        any other table's view follows the glob, so it sees later appends and deduplicates. A
        table with no files at connect time is a typed empty view for this connection.

        sandbox: once the views exist, the connection may touch no file outside the store, load
        no extension and change no setting (for queries a user types; see queries.run_sql)."""
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            if self.location.fsspec_filesystem is not None:
                con.register_filesystem(self.location.fsspec_filesystem)
            checked = self.checked_parts()
            for table in SCHEMAS:
                self._create_view(con, table, checked.get(table, CheckedParts()))
            con.execute(_REJECTS_VIEW)
            con.execute(_FAILED_REQUESTS_VIEW)
            if sandbox:
                con.execute("SET python_enable_replacements = false")  # no scans of Python variables
                # DuckDB lets a sandboxed connection reach its temp folder (<cwd>/.tmp by default),
                # which lies outside the store: no spilling, so no such folder.
                con.execute("SET temp_directory = ''")
                con.execute("SET allowed_directories = ?", [[self.location.url + "/"]])
                con.execute("SET enable_external_access = false")
                con.execute("SET autoinstall_known_extensions = false")
                con.execute("SET autoload_known_extensions = false")
                con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return con

    def _create_view(self, con: duckdb.DuckDBPyConnection, table: str, checked: CheckedParts) -> None:
        schema = SCHEMAS[table]
        empty = f"_{table}_empty"
        con.execute(f"CREATE TEMP VIEW {empty} AS {_empty_select(schema)}")
        files = self.files(table)
        if not files:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {empty}")
            return
        raw = f"_{table}_files"
        columns = ", ".join(_quote(f.name) for f in schema)
        names = {_name(path) for path in files}
        if names <= checked.unique:
            # Parts known to hold each key once, read as listed now (a later append or merge is not
            # seen: it could repeat their keys). Parts known to have this code's schema are read
            # without opening every file's footer first.
            urls = [self._url(table, name) for name in sorted(names)]
            typed = names <= checked.typed
            con.read_parquet(urls, union_by_name=not typed).create_view(raw)
            source = raw if typed else f"(SELECT * FROM {empty} UNION ALL BY NAME SELECT * FROM {raw})"
            con.execute(f"CREATE VIEW {table} AS SELECT {columns} FROM {source}")
            return
        glob = self._url(table, "part-*.parquet")
        con.read_parquet(glob, union_by_name=True, filename=True, file_row_number=True).create_view(raw)
        # The typed empty table supplies every current column, so files written before a column
        # existed read it as NULL; columns this code does not know are left out.
        keys = ", ".join(_quote(key) for key in PRIMARY_KEYS[table])
        con.execute(
            f"CREATE VIEW {table} AS SELECT {columns} FROM "
            f"(SELECT * FROM {empty} UNION ALL BY NAME SELECT * FROM {raw}) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {_order(table, 'created_at', 'filename', 'file_row_number')}) = 1"
        )

    def checked_parts(self) -> dict[str, CheckedParts]:
        """Per table, what compaction recorded of its parts ({} when nothing was recorded or the
        record cannot be read: every view then deduplicates)."""
        try:
            with self.location.filesystem.open_input_stream(f"{self.location.path}/{UNIQUE}") as handle:
                recorded = json.loads(handle.read())
            return {table: CheckedParts.from_record(table, entry) for table, entry in recorded.items()
                    if table in SCHEMAS}
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            return {}

    def fetch(self, sql: str, params: Sequence | dict | None = None) -> tuple[list[str], list[tuple]]:
        """Run one query on a fresh connection: (column names, rows)."""

        def run(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
            relation = con.sql(sql, params=params)
            return (list(relation.columns), relation.fetchall()) if relation is not None else ([], [])

        return self.read(run)

    def fetch_arrow(self, sql: str, params: Sequence | dict | None = None) -> pa.Table:
        """Run one query on a fresh connection and return the result as an Arrow table."""
        return self.read(lambda con: con.sql(sql, params=params).to_arrow_table())

    def read(self, work: Callable[[duckdb.DuckDBPyConnection], T], sandbox: bool = False) -> T:
        """work(connection) on a fresh connection, run again on a new one if a file vanished.

        compact() may delete a file between a glob's expansion and its read. Its rows are in the
        merged file already, so a fresh listing sees them; a few tries ride out back-to-back
        compactions. A part that cannot be read raises CorruptFileError. `work` must only read."""
        for attempt in range(1, _READ_ATTEMPTS + 1):
            con = None
            try:
                con = self.connect(sandbox=sandbox)
                return work(con)
            except duckdb.IOException as error:
                self._raise_if_corrupt(error, thorough=attempt == _READ_ATTEMPTS)
                if attempt == _READ_ATTEMPTS:
                    raise
                time.sleep(0.02 * attempt)
            except duckdb.InvalidInputException as error:
                self._raise_if_corrupt(error, thorough=True)
                raise
            except duckdb.Error as error:
                # A URL store's files are read through a registered fsspec filesystem, whose
                # FileNotFoundError reaches here as a plain duckdb.Error (at bind time, maybe in a
                # view over the view that read the file): the same vanished file, the same retry.
                if not _vanished(error) or attempt == _READ_ATTEMPTS:
                    raise
                time.sleep(0.02 * attempt)
            finally:
                if con is not None:
                    con.close()

    # ---- integrity -------------------------------------------------------------------------

    def corrupt_files(self, thorough: bool = True) -> list[tuple[str, str]]:
        """(path, reason) of every stored part that cannot be read: its footer, and with
        `thorough` every page too (a flipped byte inside a page leaves the footer intact)."""
        corrupt = []
        fs = self.location.filesystem
        for table in SCHEMAS:
            for path in self.files(table):
                try:
                    with fs.open_input_file(path) as handle:
                        if thorough:
                            pq.read_table(handle)
                        else:
                            pq.ParquetFile(handle).metadata  # noqa: B018 - reading it is the check
                except FileNotFoundError:
                    continue  # compacted away meanwhile
                except (pa.ArrowException, OSError) as error:
                    corrupt.append((path, str(error).splitlines()[0]))
        return corrupt

    def _raise_if_corrupt(self, error: Exception, thorough: bool = True) -> None:
        """Raise CorruptFileError if a stored part cannot be read (the likely cause of `error`)."""
        if not isinstance(error, (duckdb.IOException, duckdb.InvalidInputException)):
            return
        corrupt = self.corrupt_files(thorough=False) or (self.corrupt_files() if thorough else [])
        if corrupt:
            raise CorruptFileError(self.root, corrupt) from None

    def quarantine(self, paths: Sequence[str]) -> list[str]:
        """Move parts to <root>/_quarantine/<table>/, where no view reads them; their new paths."""
        fs = self.location.filesystem
        moved = []
        for path in paths:
            table, name = path.rsplit("/", 2)[-2:]
            folder = f"{self.location.path}/{QUARANTINE}/{table}"
            fs.create_dir(folder, recursive=True)
            fs.move(path, f"{folder}/{name}")
            moved.append(f"{folder}/{name}")
        return moved

    # ---- maintenance -----------------------------------------------------------------------

    def compact(self, part_rows: int = PART_ROWS) -> dict[str, int]:
        """Merge each table's small files into parts of at most `part_rows` rows; returns how many
        files were merged per table.

        Parts are bounded so that one damaged file loses at most its own rows. A part holding at
        least half a part's rows is left as it is (never rewritten), so compacting twice in a row
        changes nothing. Each merged part is read back and checked before the files it replaces
        are deleted, so concurrent readers see either the old files or duplicates (which views
        drop), and files appended meanwhile are left alone. Then records which parts hold each
        key once (merging any that hold a key twice, as a write retried after compaction can
        leave), so views read them without deduplicating. Also removes temporary files left by
        writers that died."""
        merged = {}
        with self._scratch() as scratch:
            for table in SCHEMAS:
                self._remove_stale_temporaries(table)
                for attempt in (1, 2):
                    files = self._unbounded_parts(table, part_rows)
                    if not files:
                        break
                    try:
                        self._merge(scratch, table, files, part_rows)
                    except FileNotFoundError:
                        if attempt == 2:  # another compaction is deleting these files right now
                            raise
                        continue
                    merged[table] = len(files)
                    break
            self._record_checked_parts(scratch, part_rows)
        return merged

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[_Connection]:
        """One in-memory DuckDB connection for a compaction's merges and checks, opened when first
        needed: opening one costs ~20 ms, and a compaction after a small buy runs eight queries."""
        opened: list[duckdb.DuckDBPyConnection] = []

        def connection() -> duckdb.DuckDBPyConnection:
            if not opened:
                con = duckdb.connect()
                opened.append(con)
                con.execute("SET TimeZone = 'UTC'")
                if self.location.fsspec_filesystem is not None:
                    con.register_filesystem(self.location.fsspec_filesystem)
            return opened[0]

        try:
            yield connection
        finally:
            for con in opened:
                con.close()

    def _merge(self, scratch: _Connection, table: str, files: list[str], part_rows: int) -> None:
        """Replace `files` by parts of at most `part_rows` rows holding each of their keys once."""
        data = self._read_deduplicated(scratch(), table, files)
        for offset in range(0, data.num_rows, part_rows):
            self._write_checked(table, data.slice(offset, part_rows))
        for path in files:
            _delete_quietly(self.location.filesystem, path)

    def _record_checked_parts(self, scratch: _Connection, part_rows: int) -> None:
        """Check each table whose parts changed since the last record for keys held twice, merge the
        parts that hold such keys, and record the parts that now hold each key once, and which of
        them have this code's schema (best effort: without a record views only deduplicate)."""
        recorded, checked = self.checked_parts(), {}
        for table in SCHEMAS:
            files = self.files(table)
            names = frozenset(_name(path) for path in files)
            before = recorded.get(table, CheckedParts())
            if not names <= before.unique:
                try:
                    holding = self._parts_holding_duplicates(scratch(), table, files, before.unique)
                    if holding:
                        self._merge(scratch, table, holding, part_rows)
                        files = self.files(table)
                        if self._parts_holding_duplicates(scratch(), table, files, frozenset()):
                            continue
                except (duckdb.Error, OSError):
                    continue  # a part vanished under another compaction: the next one checks again
            checked[table] = CheckedParts(
                frozenset(_name(path) for path in files),
                frozenset(_name(path) for path in files if _name(path) in before.typed or self._typed(table, path)),
            )
        if checked != recorded:
            self._write_checked_parts(checked)

    def _typed(self, table: str, path: str) -> bool:
        try:
            return pq.read_schema(path, filesystem=self.location.filesystem).remove_metadata().equals(SCHEMAS[table])
        except (OSError, pa.ArrowException):
            return False

    def _parts_holding_duplicates(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str],
                                  checked: frozenset[str]) -> list[str]:
        """The parts among `files` that hold a key some other row (in any of them) holds too. Parts
        in `checked` are known to hold no key twice between them: only the others' keys are
        grouped, and the checked parts' keys are only probed against them."""
        if not files:
            return []
        keys = ", ".join(_quote(key) for key in PRIMARY_KEYS[table])
        old = [self._url(table, _name(path)) for path in files if _name(path) in checked]
        new = [self._url(table, _name(path)) for path in files if _name(path) not in checked]
        read = f"SELECT {keys}, filename FROM read_parquet(?, filename = true, union_by_name = true)"
        if old:
            sql = (f"WITH n AS ({read}), o AS ({read}), "
                   f"d AS (SELECT {keys} FROM n GROUP BY ALL HAVING count(*) > 1 "
                   f"UNION SELECT {keys} FROM o SEMI JOIN n USING ({keys})) "
                   f"SELECT DISTINCT filename FROM (SELECT * FROM n UNION ALL SELECT * FROM o) "
                   f"SEMI JOIN d USING ({keys})")
            params = [new, old]
        else:
            sql = (f"WITH r AS ({read}) SELECT DISTINCT filename FROM r SEMI JOIN "
                   f"(SELECT {keys} FROM r GROUP BY ALL HAVING count(*) > 1) d USING ({keys})")
            params = [new]
        names = {_name(url) for (url,) in con.execute(sql, params).fetchall()}
        return [path for path in files if _name(path) in names]

    def _write_checked_parts(self, checked: dict[str, CheckedParts]) -> None:
        text = json.dumps({table: entry.record(table) for table, entry in checked.items()}, indent=0).encode()
        try:
            self.location.write_whole(f"{self.location.path}/{UNIQUE}", text)
        except OSError:
            pass

    def _unbounded_parts(self, table: str, part_rows: int) -> list[str]:
        """The parts compaction rewrites: those under half of `part_rows` rows (when there are two or
        more to merge) and those over `part_rows` (split), oldest first; [] when nothing would change."""
        small, large = [], []
        for path in self.files(table):
            try:
                with self.location.filesystem.open_input_file(path) as handle:
                    rows = pq.ParquetFile(handle).metadata.num_rows
            except FileNotFoundError:
                continue  # compacted away meanwhile
            except (pa.ArrowException, OSError) as error:
                raise CorruptFileError(self.root, [(path, str(error).splitlines()[0])]) from None
            if rows > part_rows:
                large.append(path)
            elif rows < part_rows / 2:
                small.append(path)
        if len(small) < 2 and not large:
            return []
        return sorted(small + large)

    def _write_checked(self, table: str, data: pa.Table) -> None:
        """Write a merged part and read it back; a part that does not hold exactly `data` is removed
        and the error raised, so the files it was to replace are kept."""
        path = self._write(table, data)
        try:
            written = pq.read_table(path, filesystem=self.location.filesystem)
            if not written.equals(data):
                raise OSError(f"merged part {path} read back {written.num_rows} rows, not the "
                              f"{data.num_rows} written; compaction kept the files it merged")
        except BaseException:
            _delete_quietly(self.location.filesystem, path)
            raise

    def _read_deduplicated(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> pa.Table:
        schema = SCHEMAS[table]
        parts = []
        for order, path in enumerate(files):
            try:
                data = pq.read_table(path, filesystem=self.location.filesystem)
            except FileNotFoundError:
                raise
            except (pa.ArrowException, OSError) as error:
                raise CorruptFileError(self.root, [(path, str(error).splitlines()[0])]) from None
            part = _conform(data, schema)
            parts.append(part.append_column("_file_order", pa.array([order] * part.num_rows, pa.int64())))
        combined = pa.concat_tables(parts)
        keys = ", ".join(_quote(key) for key in PRIMARY_KEYS[table])
        columns = ", ".join(_quote(f.name) for f in schema)
        con.register("_merging", combined)
        try:
            deduplicated = con.sql(
                f"SELECT {columns} FROM (SELECT *, row_number() OVER () AS _row FROM _merging) "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} "
                f"ORDER BY {_order(table, 'created_at', '_file_order', '_row')}) = 1 "
                "ORDER BY created_at, _file_order, _row"
            ).to_arrow_table()
        finally:
            con.unregister("_merging")
        return deduplicated.cast(schema)

    def _remove_stale_temporaries(self, table: str) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for info in self._listing(table):
            if (
                info.base_name.startswith(".tmp-")
                and info.mtime is not None
                and info.mtime.timestamp() < cutoff
            ):
                _delete_quietly(self.location.filesystem, info.path)


def _vanished(error: Exception) -> bool:
    text = str(error)
    return "FileNotFoundError" in text or "No files found that match" in text


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _is_part(info: pafs.FileInfo) -> bool:
    return (
        info.type == pafs.FileType.File
        and info.base_name.startswith("part-")
        and info.path.endswith(".parquet")
    )


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Old files lack columns added since (they read as nulls); unknown columns are dropped."""
    columns = [
        data.column(f.name) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema) if columns else data


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:  # already gone, or not ours to delete: views dedupe what stays
        pass


_REJECTS_VIEW = """
CREATE VIEW rejects AS
SELECT 'cots' AS "table", key, example_id, parse_error AS reason, text FROM cots WHERE parse_error IS NOT NULL
UNION ALL
SELECT 'evaluations', key, example_id, parse_error, text FROM evaluations WHERE parse_error IS NOT NULL
"""

# A failed call still matters while any key it asked for is missing; of several failed calls for
# the same keys only the latest says what is wrong now.
_FAILED_REQUESTS_VIEW = """
CREATE VIEW failed_requests AS
WITH latest AS (
    SELECT * FROM calls WHERE status = 'failed'
    QUALIFY row_number() OVER (PARTITION BY kind, keys ORDER BY created_at DESC, call_id) = 1
),
stored AS (
    SELECT key, 'cot' AS kind FROM cots
    UNION ALL
    SELECT key, 'evaluation' AS kind FROM evaluations
),
asked AS (SELECT call_id, kind, unnest(keys) AS key FROM latest),
unanswered AS (
    SELECT DISTINCT asked.call_id FROM asked
    ANTI JOIN stored ON stored.key = asked.key AND stored.kind = asked.kind
)
SELECT latest.* FROM latest SEMI JOIN unanswered ON unanswered.call_id = latest.call_id
"""
