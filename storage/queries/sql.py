"""`mindsmirror sql`: exactly one read-only statement on a sandboxed connection."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb

from storage.queries.calibration import add_calibration_views
from storage.queries.common import Source, _on_connection


class QueryError(ValueError):
    """A user query that is not a read, or that DuckDB cannot run; the message says which."""


_READ_ONLY = "SELECT, WITH, FROM, DESCRIBE, SHOW or SUMMARIZE"


def _read_query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple]]:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(str(error).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryError(
            f"mindsmirror sql runs exactly one read-only query, got {len(statements)} statements: "
            "remove the extra ones (and any `;` between them)"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"mindsmirror sql is read-only, and this is a {kind.name} statement: "
                         f"start the query with {_READ_ONLY}")
    try:
        relation = con.sql(sql)
        return (list(relation.columns), relation.fetchall()) if relation is not None else ([], [])
    except duckdb.Error as error:
        raise QueryError(str(error).splitlines()[0]) from None


def run_sql(store: Source, sql: str, answer_truth: Mapping[tuple[str, str], bool] | None = None
            ) -> tuple[list[str], list[tuple]]:
    """One read query over the views (for `mindsmirror sql`): (column names, rows).

    Exactly one SELECT-type statement runs, on a connection that can reach no file outside the
    store and change no setting (Store.connect(sandbox=True)); an open connection is used as is.
    With `answer_truth` ((answer, gold label) -> they match) the `judged_verdicts` and `calibration`
    views are there too (see storage.queries.calibration)."""

    def work(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
        if answer_truth is not None:
            add_calibration_views(con, answer_truth)
        return _read_query(con, sql)

    return _on_connection(store, work, sandbox=True)
