"""Named queries over the store, one module per concern. Every value goes in as a parameter or a
registered Arrow table, never as SQL text.

Each function takes a Store (a fresh connection per call, run again if compaction removes a file
mid-read) or an open DuckDB connection from Store.connect() (used as is).
"""

from storage.queries.batches import (
    closed_attempts,
    committed_usd,
    latest_batches,
    open_batch_keys,
    planned_batches,
)
from storage.queries.calibration import (
    CALIBRATION_VIEWS,
    Calibration,
    JudgedAnswer,
    add_calibration_views,
    calibration,
    judged_answers,
)
from storage.queries.common import Source
from storage.queries.generation import (
    MissingRequest,
    answered_but_missing,
    cots_by_keys,
    cots_for_examples,
    examples,
    failed_keys,
    missing_keys,
    new_examples,
    spent_usd,
    stored_sample_keys,
)
from storage.queries.spend import spent_on
from storage.queries.sql import (
    QueryError,
    run_sql,
)
from storage.queries.status import (
    StatusReport,
    latest_results,
    status,
)
from storage.queries.trainsets import (
    JudgedCot,
    Provenance,
    SelfEvalPair,
    SelfEvalTables,
    StoredSource,
    TrainingRow,
    TrainingRows,
    chosen_cots,
    cot_rows,
    judged_cot_table,
    judged_cots,
    label_rows,
    self_eval_rows,
    self_eval_tables,
    stored_sources,
    teacher_answers,
)

__all__ = [
    "CALIBRATION_VIEWS",
    "Calibration",
    "JudgedAnswer",
    "JudgedCot",
    "MissingRequest",
    "Provenance",
    "QueryError",
    "SelfEvalPair",
    "SelfEvalTables",
    "Source",
    "StatusReport",
    "StoredSource",
    "TrainingRow",
    "TrainingRows",
    "add_calibration_views",
    "answered_but_missing",
    "calibration",
    "chosen_cots",
    "closed_attempts",
    "committed_usd",
    "cot_rows",
    "cots_by_keys",
    "cots_for_examples",
    "examples",
    "failed_keys",
    "label_rows",
    "judged_answers",
    "judged_cot_table",
    "judged_cots",
    "latest_batches",
    "latest_results",
    "missing_keys",
    "new_examples",
    "open_batch_keys",
    "planned_batches",
    "run_sql",
    "self_eval_rows",
    "self_eval_tables",
    "spent_on",
    "spent_usd",
    "status",
    "stored_sample_keys",
    "stored_sources",
    "teacher_answers",
]
