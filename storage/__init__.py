"""Parquet files as the source of truth, DuckDB views to read them, named queries over the views."""

from storage import keycache, queries
from storage.claims import Claims, ClaimsUnavailable, LocalClaims, open_claims
from storage.records import (
    PRIMARY_KEYS,
    SCHEMA_VERSION,
    SCHEMAS,
    BatchRow,
    CallRow,
    CotRow,
    EvaluationRow,
    ExampleRow,
    PredictionRow,
    ResultRow,
)
from storage.store import CorruptFileError, Store

__all__ = [
    "PRIMARY_KEYS",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "BatchRow",
    "CallRow",
    "keycache",
    "Claims",
    "ClaimsUnavailable",
    "LocalClaims",
    "open_claims",
    "CorruptFileError",
    "CotRow",
    "EvaluationRow",
    "ExampleRow",
    "PredictionRow",
    "ResultRow",
    "Store",
    "queries",
]
