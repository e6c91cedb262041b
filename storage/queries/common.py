"""Plumbing shared by the named queries: run SQL on a Store or an open connection, rows out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import duckdb
import pyarrow as pa

from storage import arrow
from storage.store import Store

Source = Store | duckdb.DuckDBPyConnection


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _run(source: Source, sql: str, params=None, tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
    def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
        for name, table in (tables or {}).items():
            con.register(name, table)
        try:
            return con.sql(sql, params=params).to_arrow_table()
        finally:
            for name in tables or {}:
                con.unregister(name)

    return _on_connection(source, work)


def _on_connection(source: Source, work, sandbox: bool = False):
    """work(connection): on a fresh store connection (run again if compaction removed a file
    mid-read), or on the open connection given, as is."""
    if isinstance(source, Store):
        return source.read(work, sandbox=sandbox)
    return work(source)


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def _strings(values: Iterable[str]) -> pa.Table:
    """A one-column table to join against: values stay data, never SQL text."""
    return pa.table({"value": arrow.strings(values)})


def _records(kind, table: pa.Table) -> list:
    columns = [arrow.pylist(table.column(f.name)) for f in dataclasses.fields(kind)]
    return [kind(*values) for values in zip(*columns)]
