"""Stored row types: each Arrow schema is derived from its record dataclass, so the two cannot drift."""

import dataclasses
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from storage.records import INT64, SCHEMAS, TABLE_OF, arrow_schema


@pytest.mark.parametrize("record", list(TABLE_OF), ids=lambda record: record.__name__)
def test_every_field_of_a_record_is_a_column_of_its_table_in_order(record):
    schema = SCHEMAS[TABLE_OF[record]]
    assert schema.names == [f.name for f in dataclasses.fields(record)]


def test_annotations_map_to_arrow_types_and_int64_is_asked_for():
    @dataclass(frozen=True)
    class Row:
        name: str
        count: int
        big: int = field(metadata=INT64)
        share: float | None = None
        keys: tuple[str, ...] = ()
        flag: bool = False

    schema = arrow_schema(Row)
    assert [schema.field(n).type for n in schema.names] == [
        pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.list_(pa.string()), pa.bool_()
    ]


def test_an_annotation_without_an_arrow_type_fails_naming_the_field():
    @dataclass(frozen=True)
    class Row:
        payload: dict

    with pytest.raises(TypeError, match="Row.payload"):
        arrow_schema(Row)
