"""What the teacher was paid for a set of stored samples, from the `calls` table."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from storage.queries.common import Source, _run, _strings

# A request's cost is shared evenly by the samples it lists (one request with n=5 brings five CoTs);
# a sample asked for by several requests (a retry that was billed) carries a share of each.
_SPEND_SQL = """
WITH shares AS (
    SELECT cost_usd / len(keys) AS usd, unnest(keys) AS key FROM calls WHERE len(keys) > 0
)
SELECT coalesce(sum(s.usd), 0.0) AS usd FROM shares s JOIN (SELECT DISTINCT value FROM _keys) k ON k.value = s.key
"""


def spent_on(store: Source, keys: Iterable[str] | pa.Array) -> float:
    """US dollars the teacher's requests cost for these sample keys (imported samples cost nothing)."""
    keys = pa.table({"value": keys}) if isinstance(keys, pa.Array) else _strings(keys)
    table = _run(store, _SPEND_SQL, tables={"_keys": keys})
    return float(table.column("usd")[0].as_py())
