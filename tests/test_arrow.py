"""storage.arrow makes the columns pyarrow's converters make, and reads them back as they do."""

from __future__ import annotations

from datetime import datetime, timezone

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
