"""Python values to Arrow columns and back, without importing pandas.

pyarrow imports pandas, where it is installed, the first time it converts Python objects or a NumPy
array (`pa.array`) or a time-zoned timestamp back to Python (`to_pylist`): 0.2-0.3 s, about a
seventh of a `status` on a large store. The columns the store's readers build from Python values
(ids, keys, hashes, flags; never null) are laid out here from their buffers instead, with the same
types and values as `pa.array`, and `pylist` reads UTC timestamps (every row's `created_at`) itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def optional_strings(values: Iterable[str | None]) -> pa.Array:
    """A `string` column of these values, None as null."""
    values = values if isinstance(values, list) else list(values)
    filled = strings(["" if value is None else value for value in values])
    if None not in values:
        return filled
    valid = booleans(value is not None for value in values).buffers()[1]
    return pa.Array.from_buffers(pa.string(), len(values), [valid, *filled.buffers()[1:]])


def optional_string_lists(values: Iterable[Sequence[str] | None]) -> pa.Array:
    """A `list<string>` column of these lists of strings, None as null."""
    values = values if isinstance(values, list) else list(values)
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(value or ()) for value in values], out=offsets[1:])
    mask = booleans(value is None for value in values) if None in values else None
    return pa.ListArray.from_arrays(numbers(offsets), strings([s for value in values for s in value or ()]),
                                    type=pa.list_(pa.string()), mask=mask)


def int32s(values: Iterable[int]) -> pa.Array:
    """An `int32` column of these values (none of them None)."""
    data = np.fromiter(values, np.int32)
    return pa.Array.from_buffers(pa.int32(), len(data), [None, pa.py_buffer(data)])


def booleans(values: Iterable[bool]) -> pa.Array:
    """A `bool` column of these values (none of them None)."""
    data = np.fromiter(values, np.bool_)
    return pa.Array.from_buffers(pa.bool_(), len(data), [None, pa.py_buffer(np.packbits(data, bitorder="little"))])


def numbers(values: np.ndarray) -> pa.Array:
    """A column of a 1-D NumPy array of numbers or booleans (what `pa.array` gives it)."""
    if values.dtype == np.bool_:
        return booleans(values)
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64, pa.uint64(): np.uint64}


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as a NumPy array (what `to_numpy` gives, which imports pandas)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:
        raise ValueError("to_numpy takes a column without nulls")
    dtype = np.dtype(_NUMPY_TYPES[values.type])
    return np.frombuffer(values.buffers()[1], dtype, len(values), values.offset * dtype.itemsize)


_BUILDERS = {pa.string(): strings, pa.int32(): int32s, pa.bool_(): booleans}


def table(schema: pa.Schema, columns: Iterable[Iterable]) -> pa.Table:
    """A table of `schema` from one iterable of values per field (types: string, int32, bool)."""
    return pa.table([_BUILDERS[field.type](column) for field, column in zip(schema, columns, strict=True)],
                    schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    """A table of `schema` with no rows (what `schema.empty_table()` gives)."""
    return table(schema, [()] * len(schema))


def where(table: pa.Table, mask: pa.Array | pa.ChunkedArray) -> pa.Table:
    """The rows of `table` where `mask` is true; `table` itself when that is every row (a filter
    copies every value, ~0.25 s for 180,000 CoTs with their texts)."""
    if pc.all(mask, skip_nulls=False).as_py() is True:  # a null counts as not true
        return table
    return table.filter(mask)


def pylist(column: pa.Array | pa.ChunkedArray) -> list:
    """The column's values as Python objects, as `to_pylist` gives them."""
    kind = column.type
    if not (pa.types.is_timestamp(kind) and kind.tz == "UTC" and kind.unit in _STEPS):
        return column.to_pylist()
    step = _STEPS[kind.unit]
    return [None if value is None else _EPOCH + value * step for value in column.cast(pa.int64()).to_pylist()]
