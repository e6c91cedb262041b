"""The rows of every stored table, as frozen dataclasses with explicit Arrow schemas.

A row records what made it: teacher model, prompt version, sampling parameters and schema version.
Adding a column means bumping SCHEMA_VERSION and giving the new field a default, so old Parquet
files still read (views use ``union_by_name``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

SCHEMA_VERSION = 1

# Arrow types follow from each field's annotation (see arrow_schema); int columns are int32 unless
# a field asks for int64 with this metadata.
INT64 = {"arrow": pa.int64()}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ExampleRow:
    example_id: str
    split: str  # train | validation | test
    input: str
    label: str
    dataset: str
    source: str  # "<file>:<row>" the example was read from
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class CotRow:
    key: str  # hash of everything that determines this sample (see tasks.teacher.keys)
    example_id: str
    cot_index: int
    text: str  # raw teacher output
    answer: str | None  # parsed answer, normalised for the task
    rationale: str | None  # the reasoning up to and including the answer sentence
    parse_error: str | None  # why answer is None; such rows are kept but never trained on
    finish_reason: str | None
    teacher_model: str
    prompt_version: str
    temperature: float
    top_p: float
    max_tokens: int
    source: str  # teacher | dss | tot
    call_id: str | None
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class EvaluationRow:
    key: str
    example_id: str
    cot_index: int
    cot_key: str  # the CotRow judged
    eval_index: int
    text: str
    verdict: str | None  # correct | wrong | uncertain
    rationale: str | None
    parse_error: str | None
    finish_reason: str | None
    teacher_model: str
    prompt_version: str
    temperature: float
    top_p: float
    max_tokens: int
    source: str
    call_id: str | None
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class CallRow:
    """One teacher request, successful or not. Written after the rows it produced."""

    call_id: str
    kind: str  # cot | evaluation
    example_id: str
    keys: tuple[str, ...]  # the sample keys this request asked for
    status: str  # ok | failed | abandoned (sent, timed out: possibly billed; no keys)
    attempts: int
    prompt_tokens: int = field(metadata=INT64)
    completion_tokens: int = field(metadata=INT64)
    cost_usd: float
    latency_s: float
    error: str | None
    teacher_model: str
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION
    # latency_s = queue_s + server_s: queue_s is the wait for admission, a connection slot, rate limits
    # and retry backoff; server_s the time on the wire. Null in rows written before the split; a Batch
    # API line has no time on the wire of its own: server_s null, queue_s its batch's creation to finish.
    queue_s: float | None = None
    server_s: float | None = None
    usage_estimated: bool = False  # the server sent no `usage`: the token counts are our estimate


@dataclass(frozen=True)
class BatchRow:
    """One step in the life of a Batch API batch; the latest row of a tag says where it stands.

    The first row of a tag (event "planned") is written before anything is uploaded and holds the
    batch's sample keys and one JSON manifest per request line; later rows add the file and batch
    ids and the API's status and counts, and "collected" closes the tag once its output is stored.
    """

    event_id: str
    tag: str  # hash of the keyset and the attempt: the batch's metadata carries it
    keyset: str  # hash of the batch's sample keys
    event: str  # planned | uploaded | submitted | polled | collected
    keys: tuple[str, ...]  # sample keys (planned rows only)
    requests: tuple[str, ...]  # one JSON manifest per request line (planned rows only)
    batch_id: str | None
    input_file_id: str | None
    status: str | None  # the API's: validating | in_progress | finalizing | completed | expired | ...
    requests_total: int
    requests_completed: int
    requests_failed: int
    estimated_cost_usd: float  # upper bound at batch prices: committed spend while the batch is open
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class PredictionRow:
    arm: str
    split: str
    example_id: str
    prediction: str
    rationale: str | None
    label: str
    correct: bool
    checkpoint: str
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ResultRow:
    arm: str
    split: str
    metric: str  # accuracy | self_eval_agreement | teacher_accuracy | ...
    value: float
    n: int = field(metadata=INT64)
    checkpoint: str
    created_at: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


_ARROW_TYPES = {
    "str": pa.string(),
    "int": pa.int32(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "tuple[str, ...]": pa.list_(pa.string()),
}


def arrow_schema(record: type) -> pa.Schema:
    """The Arrow schema of a record type, one column per dataclass field in declaration order.

    Deriving it keeps the two from drifting: a field added to a record is a column, and an annotation
    this mapping does not know fails at import time instead of writing a wrong type."""
    columns = []
    for f in dataclasses.fields(record):
        # A string under `from __future__ import annotations`, else the type itself.
        annotation = f.type.__name__ if type(f.type) is type else str(f.type)
        annotation = annotation.replace(" | None", "")
        arrow_type = f.metadata.get("arrow") or _ARROW_TYPES.get(annotation)
        if arrow_type is None:
            raise TypeError(f"{record.__name__}.{f.name}: no Arrow type for annotation {f.type!r}")
        columns.append(pa.field(f.name, arrow_type))
    return pa.schema(columns)


TABLE_OF = {
    ExampleRow: "examples",
    CotRow: "cots",
    EvaluationRow: "evaluations",
    CallRow: "calls",
    BatchRow: "batches",
    PredictionRow: "predictions",
    ResultRow: "results",
}

SCHEMAS: dict[str, pa.Schema] = {table: arrow_schema(record) for record, table in TABLE_OF.items()}

# The columns that identify a row: views keep one row per key, so a file written twice (a crash
# between compaction's write and delete, or two runs racing on one request) never counts twice.
PRIMARY_KEYS = {
    "examples": ("example_id",),
    "cots": ("key",),
    "evaluations": ("key",),
    "calls": ("call_id",),
    "batches": ("event_id",),
    "predictions": ("arm", "split", "example_id", "checkpoint"),
    "results": ("arm", "split", "metric", "checkpoint"),
}


def to_arrow(rows: list) -> tuple[str, pa.Table]:
    """The table name and an Arrow table for rows that are all of one record type."""
    if not rows:
        raise ValueError("to_arrow needs at least one row")
    kind = type(rows[0])
    if any(type(row) is not kind for row in rows):
        raise TypeError("rows of one append must all be of one record type")
    table = TABLE_OF[kind]
    columns = {f.name: [getattr(row, f.name) for row in rows] for f in dataclasses.fields(kind)}
    return table, pa.Table.from_pydict(columns, schema=SCHEMAS[table])
