"""storage.arrow makes the columns pyarrow's converters make, and reads them back as they do."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from storage import arrow

TEXTS = ["", "plain", "ünïcödé ✓", "two\nlines", "x" * 5000]


def test_columns_are_the_ones_pa_array_makes():
    assert arrow.strings(TEXTS).equals(pa.array(TEXTS, pa.string()))
    assert arrow.strings(text for text in TEXTS).equals(pa.array(TEXTS, pa.string()))  # any iterable
    ascii_only = [text for text in TEXTS if text.isascii()]  # laid out without encoding each value
    assert arrow.strings(ascii_only).equals(pa.array(ascii_only, pa.string()))
    assert arrow.int32s([0, -1, 2**31 - 1, -(2**31)]).equals(pa.array([0, -1, 2**31 - 1, -(2**31)], pa.int32()))
    flags = [True, False, False, True, True, False, True, True, False]  # more than one byte of bits
    assert arrow.booleans(flags).equals(pa.array(flags, pa.bool_()))
    for build, kind in ((arrow.strings, pa.string()), (arrow.int32s, pa.int32()), (arrow.booleans, pa.bool_())):
        assert build([]).equals(pa.array([], kind))


def test_optional_values_numbers_and_lists_are_the_columns_pa_array_makes():
    texts = ["a", None, "ünï", None]
    assert arrow.optional_strings(texts).equals(pa.array(texts, pa.string()))
    assert arrow.optional_strings(["a", "b"]).equals(pa.array(["a", "b"], pa.string()))
    lists = [("x", "y"), None, (), ("z",)]
    kind = pa.list_(pa.string())
    assert arrow.optional_string_lists(lists).equals(pa.array([None if v is None else list(v) for v in lists], kind))
    assert arrow.optional_string_lists([("x",)]).equals(pa.array([["x"]], kind))
    for values in (np.arange(5, dtype=np.int32), np.arange(10, dtype=np.int64)[::3], np.array([True, False, True])):
        assert arrow.numbers(values).equals(pa.array(values))


def test_integer_columns_read_back_as_numpy_without_copying_nulls_in():
    column = pa.chunked_array([pa.array([3, 1], pa.int64()), pa.array([2], pa.int64())])
    assert arrow.to_numpy(column).tolist() == [3, 1, 2]
    assert arrow.to_numpy(pa.array(range(10), pa.int32()).slice(4, 3)).tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="without nulls"):
        arrow.to_numpy(pa.array([1, None], pa.int64()))


def test_where_keeps_the_rows_whose_mask_is_true_and_copies_nothing_when_that_is_all_of_them():
    table = pa.table({"n": [1, 2, 3]})
    assert arrow.where(table, pa.array([True, True, True])) is table
    assert arrow.where(table, pa.chunked_array([[True], [True, True]])) is table
    assert arrow.where(table, pa.array([True, False, True])).column("n").to_pylist() == [1, 3]
    assert arrow.where(table, pa.array([True, None, True])).column("n").to_pylist() == [1, 3]  # null: not kept


def test_a_table_and_an_empty_one_have_the_schema_asked_for():
    schema = pa.schema([("id", pa.string()), ("index", pa.int32()), ("right", pa.bool_())])
    expected = pa.table([pa.array(["a", "b"]), pa.array([1, 2], pa.int32()), pa.array([True, False])], schema=schema)
    assert arrow.table(schema, [("a", "b"), (1, 2), (True, False)]).equals(expected)
    assert arrow.empty(schema).equals(schema.empty_table())
    with pytest.raises(ValueError):
        arrow.table(schema, [("a",), (1,)])  # a column missing


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", None])
def test_timestamps_read_back_as_to_pylist_reads_them(unit, zone):
    moments = [datetime(2026, 12, 7, 20, 53, 54, 123000, tzinfo=timezone.utc), None,
               datetime(1969, 7, 20, 20, 17, 40, tzinfo=timezone.utc)]
    column = pa.chunked_array([pa.array(moments[:2], pa.timestamp(unit, tz=zone)),
                               pa.array(moments[2:], pa.timestamp(unit, tz=zone))])
    read, expected = arrow.pylist(column), column.to_pylist()
    assert read == expected
    assert [type(getattr(value, "tzinfo", None)) for value in read] == \
        [type(getattr(value, "tzinfo", None)) for value in expected]
