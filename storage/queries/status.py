"""What the store holds, per table and split, and what generation has spent and still lacks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from storage.queries.common import Source, _records, _rounded, _rows, _run
from storage.records import SCHEMAS, ResultRow


@dataclass(frozen=True)
class StatusReport:
    rows: Mapping[str, int]  # per table, after deduplication
    examples_by_split: Mapping[str, int]
    cots_by_split: Mapping[str, int]
    cots_parsed: int
    cots_unparseable: int
    evaluations_parsed: int
    evaluations_unparseable: int
    calls_ok: int
    calls_failed: int
    failed_requests: int  # failed calls whose samples are still missing
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_p50_s: float | None
    failed_samples: int = 0  # samples whose latest request failed and that are still missing
    calls_usage_estimated: int = 0  # calls whose token counts are estimates (the server sent no usage)
    queue_p50_s: float | None = None
    server_p50_s: float | None = None
    # Attempts sent and timed out (calls with status `abandoned`): the server may have billed them;
    # their estimated cost is not in cost_usd but counts against teacher.max_cost_usd.
    abandoned_attempts: int = 0
    possibly_billed_usd: float = 0.0

    def as_dict(self) -> dict[str, dict]:
        """Sections of plain values, for printing or JSON."""
        report = self._sections()
        if self.abandoned_attempts:
            report["calls"]["possibly billed: timed-out attempts"] = self.abandoned_attempts
            report["calls"]["possibly billed usd (estimated, counted against the budget)"] = round(
                self.possibly_billed_usd, 6)
        return report

    def _sections(self) -> dict[str, dict]:
        return {
            "rows": dict(self.rows),
            "examples by split": dict(self.examples_by_split),
            "cots by split": dict(self.cots_by_split),
            "parsing": {
                "cots parsed": self.cots_parsed,
                "cots unparseable": self.cots_unparseable,
                "evaluations parsed": self.evaluations_parsed,
                "evaluations unparseable": self.evaluations_unparseable,
            },
            "calls": {
                "ok": self.calls_ok,
                "failed": self.calls_failed,
                "failed requests still missing": self.failed_requests,
                "failed samples still missing": self.failed_samples,
                "prompt tokens": self.prompt_tokens,
                "completion tokens": self.completion_tokens,
                "calls with estimated tokens (no usage from the server)": self.calls_usage_estimated,
                "cost usd": round(self.cost_usd, 6),  # estimated in part when the line above is not 0
                "latency p50 s": _rounded(self.latency_p50_s),
                "queue time p50 s": _rounded(self.queue_p50_s),
                "server time p50 s": _rounded(self.server_p50_s),
            },
        }


def latest_results(store: Source) -> list[ResultRow]:
    """The most recent value of each (arm, split, metric), by arm, split and metric."""
    sql = """
        SELECT * FROM results
        QUALIFY row_number() OVER (
            PARTITION BY arm, split, metric ORDER BY created_at DESC, checkpoint DESC
        ) = 1
        ORDER BY arm, split, metric
    """
    return _records(ResultRow, _run(store, sql))


# Failure accounting is per sample: a sample counts as failed while it is missing and the latest
# request that asked for it failed; a later request that brought it, or asked again, clears it.
# Only keys some failed request asked for can count, so the rest of the calls is never unnested.
_FAILED_SQL = """
WITH failed_keys AS (SELECT DISTINCT kind, unnest(keys) AS key FROM calls WHERE status = 'failed'),
asked AS (
    SELECT a.* FROM (SELECT call_id, kind, status, created_at, unnest(keys) AS key FROM calls) a
    SEMI JOIN failed_keys f ON f.key = a.key AND f.kind = a.kind
),
latest AS (
    SELECT * FROM asked QUALIFY row_number() OVER (PARTITION BY kind, key ORDER BY created_at DESC, call_id) = 1
),
stored AS (SELECT key, 'cot' AS kind FROM cots UNION ALL SELECT key, 'evaluation' AS kind FROM evaluations),
_missing_failed AS (
    SELECT latest.call_id, latest.key FROM latest
    ANTI JOIN stored ON stored.key = latest.key AND stored.kind = latest.kind
    WHERE latest.status = 'failed'
)
SELECT count(DISTINCT call_id) AS failed_requests, count(*) AS failed_samples FROM _missing_failed
"""

# One pass over each table (every view deduplicates its files: each mention costs a scan).
_STATUS_SQL = """
WITH c AS (SELECT count(*) AS cots, count(*) FILTER (WHERE parse_error IS NULL) AS cots_parsed FROM cots),
e AS (
    SELECT count(*) AS evaluations, count(*) FILTER (WHERE parse_error IS NULL) AS evaluations_parsed
    FROM evaluations
),
k AS (
    SELECT
        count(*) AS calls,
        count(*) FILTER (WHERE status = 'ok') AS calls_ok,
        count(*) FILTER (WHERE status = 'failed') AS calls_failed,
        count(*) FILTER (WHERE usage_estimated) AS calls_usage_estimated,
        quantile_cont(queue_s, 0.5) FILTER (WHERE status = 'ok') AS queue_p50_s,
        quantile_cont(server_s, 0.5) FILTER (WHERE status = 'ok') AS server_p50_s,
        coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
        coalesce(sum(completion_tokens), 0) AS completion_tokens,
        coalesce(sum(cost_usd) FILTER (WHERE status <> 'abandoned'), 0.0) AS cost_usd,
        coalesce(sum(attempts) FILTER (WHERE status = 'abandoned'), 0) AS abandoned_attempts,
        coalesce(sum(cost_usd) FILTER (WHERE status = 'abandoned'), 0.0) AS possibly_billed_usd,
        quantile_cont(latency_s, 0.5) FILTER (WHERE status = 'ok') AS latency_p50_s
    FROM calls
)
SELECT
    (SELECT count(*) FROM examples) AS examples,
    (SELECT count(*) FROM predictions) AS predictions,
    (SELECT count(*) FROM results) AS results,
    c.*, e.*, k.*
FROM c, e, k
"""


_BY_SPLIT_SQL = """
SELECT 'examples' AS what, split, count(*) AS n FROM examples GROUP BY split
UNION ALL
SELECT 'cots', coalesce(e.split, '(unknown example)'), count(*) FROM cots c
LEFT JOIN examples e ON e.example_id = c.example_id GROUP BY 2
"""


def status(store: Source) -> StatusReport:
    """Counts, spending and latency of everything stored."""
    totals = _rows(_run(store, _STATUS_SQL))[0]
    failed = _rows(_run(store, _FAILED_SQL))[0] if totals["calls_failed"] else {}
    by_split: dict[str, dict[str, int]] = {"examples": {}, "cots": {}}
    for row in _rows(_run(store, _BY_SPLIT_SQL)):
        by_split[row["what"]][row["split"]] = row["n"]
    return StatusReport(
        rows={table: totals[table] for table in SCHEMAS if table in totals},  # batches: latest_batches
        examples_by_split=dict(sorted(by_split["examples"].items())),
        cots_by_split=dict(sorted(by_split["cots"].items())),
        cots_parsed=totals["cots_parsed"],
        cots_unparseable=totals["cots"] - totals["cots_parsed"],
        evaluations_parsed=totals["evaluations_parsed"],
        evaluations_unparseable=totals["evaluations"] - totals["evaluations_parsed"],
        calls_ok=totals["calls_ok"],
        calls_failed=totals["calls_failed"],
        failed_requests=failed.get("failed_requests", 0),
        prompt_tokens=int(totals["prompt_tokens"]),
        completion_tokens=int(totals["completion_tokens"]),
        cost_usd=float(totals["cost_usd"]),
        latency_p50_s=totals["latency_p50_s"],
        failed_samples=failed.get("failed_samples", 0),
        calls_usage_estimated=totals["calls_usage_estimated"],
        queue_p50_s=totals["queue_p50_s"],
        server_p50_s=totals["server_p50_s"],
        abandoned_attempts=int(totals["abandoned_attempts"]),
        possibly_billed_usd=float(totals["possibly_billed_usd"]),
    )
