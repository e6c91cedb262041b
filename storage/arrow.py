"""Python values to Arrow columns and back, without importing pandas.

pyarrow imports pandas, where it is installed, the first time it converts Python objects or a NumPy
array (`pa.array`) or a time-zoned timestamp back to Python (`to_pylist`): 0.2-0.3 s, about a
seventh of a `status` on a large store. The columns the store's readers build from Python values
(ids, keys, hashes, flags; never null) are laid out here from their buffers instead, with the same
types and values as `pa.array`, and `pylist` reads UTC timestamps (every row's `created_at`) itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

_MAX_OFFSET = 2**31 - 1  # a `string` column's offsets are int32
_UTC = ZoneInfo("UTC")  # what to_pylist gives a timestamp column's "UTC" time zone
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_STEPS = {"s": timedelta(seconds=1), "ms": timedelta(milliseconds=1), "us": timedelta(microseconds=1)}


def strings(values: Iterable[str]) -> pa.Array:
    """A `string` column of these values (none of them None)."""
    values = values if isinstance(values, list) else list(values)
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    data = "".join(values).encode("utf-8")
    if len(data) == lengths.sum() <= _MAX_OFFSET:  # ASCII only: a character is a byte
        offsets = np.zeros(len(values) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        return pa.array([value.decode("utf-8") for value in encoded], pa.string())
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def int32s(values: Iterable[int]) -> pa.Array:
    """An `int32` column of these values (none of them None)."""
    data = np.fromiter(values, np.int32)
    return pa.Array.from_buffers(pa.int32(), len(data), [None, pa.py_buffer(data)])


def booleans(values: Iterable[bool]) -> pa.Array:
    """A `bool` column of these values (none of them None)."""
    data = np.fromiter(values, np.bool_)
    return pa.Array.from_buffers(pa.bool_(), len(data), [None, pa.py_buffer(np.packbits(data, bitorder="little"))])


_BUILDERS = {pa.string(): strings, pa.int32(): int32s, pa.bool_(): booleans}


def table(schema: pa.Schema, columns: Iterable[Iterable]) -> pa.Table:
    """A table of `schema` from one iterable of values per field (types: string, int32, bool)."""
    return pa.table([_BUILDERS[field.type](column) for field, column in zip(schema, columns, strict=True)],
                    schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    """A table of `schema` with no rows (what `schema.empty_table()` gives)."""
    return table(schema, [()] * len(schema))


def pylist(column: pa.Array | pa.ChunkedArray) -> list:
    """The column's values as Python objects, as `to_pylist` gives them."""
    kind = column.type
    if not (pa.types.is_timestamp(kind) and kind.tz == "UTC" and kind.unit in _STEPS):
        return column.to_pylist()
    step = _STEPS[kind.unit]
    return [None if value is None else _EPOCH + value * step for value in column.cast(pa.int64()).to_pylist()]
