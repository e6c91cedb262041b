import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.answers import evaluate_equation
from tasks.config import CustomConfig, DatasetConfig
from tasks.data.datasets import DatasetError, answer_type, load_dataset, load_sources


def _splits(rows):
    return Counter(row.split for row in rows)


def _custom(tmp_path, name, content, *, label_type="text", id_field=None, **fields):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    custom = CustomConfig(files={"train": str(path)}, label_type=label_type, id_field=id_field, **fields)
    return DatasetConfig(name="custom", custom=custom, splits=["train"], validation_fraction=0.0)


# ---- the real DSS data ---------------------------------------------------------------------


def test_svamp_is_720_train_80_validation_200_test(shared_data):
    rows = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp")))
    assert _splits(rows) == {"train": 720, "validation": 80, "test": 200}
    first = rows[0]
    assert first.example_id == "svamp-train-00000"
    assert first.input.startswith("Luke scored 84 points") and "\nHow many points" in first.input
    assert first.label == "( 84.0 / 2.0 )" and first.source == "svamp_train.json:0"
    assert all(evaluate_equation(row.label) for row in rows)


def test_validation_is_the_rows_dss_holds_out(shared_data):
    # DSS: datasets["train"].train_test_split(test_size=0.1, seed=0), which takes the first
    # ceil(0.1 * 800) = 80 positions of numpy's default_rng(0) permutation
    rows = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp"), splits=["train"]))
    held_out = {int(row.example_id[-5:]) for row in rows if row.split == "validation"}
    assert held_out == set(np.random.default_rng(0).permutation(800)[:80].tolist())


def test_validation_rows_depend_only_on_the_seed(shared_data):
    def held_out(**settings):
        rows = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp"), **settings))
        return {row.example_id for row in rows if row.split == "validation"}

    assert held_out() == held_out()
    assert held_out() != held_out(validation_seed=1)
    assert len(held_out(validation_fraction=0.25)) == 200


def test_asking_for_validation_alone_reads_it_from_train(shared_data):
    rows = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp"), splits=["validation"]))
    assert _splits(rows) == {"validation": 80}


def test_limit_keeps_the_first_rows_their_ids_and_their_splits(shared_data):
    full = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp")))
    rows = load_dataset(DatasetConfig(name="svamp", path=str(shared_data / "svamp"), limit=20))
    split_of = {row.example_id: row.split for row in full}
    assert all(split_of[row.example_id] == row.split for row in rows)
    assert _splits(rows) == {"train": 16, "validation": 4, "test": 20}  # rows 2, 8, 13 and 19
    assert {row.example_id for row in rows if row.split == "test"} == {
        f"svamp-test-{i:05d}" for i in range(20)
    }
    [source] = [
        s
        for s in load_sources(DatasetConfig(name="svamp", path=str(shared_data / "svamp"), limit=20))
        if s.name == "train"
    ]
    assert len(source.rows) == 20 and source.total_rows == 800


def test_cqa_lists_five_lettered_choices_and_uses_the_answer_text(shared_data):
    rows = load_dataset(DatasetConfig(name="cqa", path=str(shared_data / "cqa"), limit=50))
    first = rows[0]
    assert first.example_id == "6b819727eb8a670df26a7ffad036c119"
    assert first.input.endswith(
        "\nAnswer Choices:\n(a) park\n(b) coloring book\n(c) garden center\n(d) math problem\n(e) gravity"
    )
    assert first.label == "math problem"
    assert answer_type(DatasetConfig(name="cqa", path="x")) == "choice"


def test_anli_maps_label_ids_to_words_and_uses_its_own_validation_file(shared_data):
    config = DatasetConfig(name="anli1", path=str(shared_data / "anli1"), splits=["validation", "test"])
    rows = load_dataset(config)
    assert _splits(rows) == {"validation": 1000, "test": 1000}
    first = rows[0]
    assert first.example_id == "bf628cf5-6948-4595-a6d0-daf99beb47b9"
    assert first.label == "contradiction"  # label 2 in the file
    assert (
        first.input.startswith("Premise: Linguistics is") and "\nHypothesis: Form and meaning" in first.input
    )
    assert Counter(row.label for row in rows if row.split == "test") == {
        "entailment": 334,
        "neutral": 333,
        "contradiction": 333,
    }


def test_anli_train_is_missing_and_the_error_names_the_file(shared_data):
    with pytest.raises(DatasetError, match=r"anli1_train\.json: no such file.*remove 'train'"):
        load_dataset(DatasetConfig(name="anli1", path=str(shared_data / "anli1")))


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(DatasetConfig(name="svamp", path=str(tmp_path / "nowhere")))


# ---- the built-in generator ----------------------------------------------------------------


def test_arithmetic_needs_no_files_and_carves_validation():
    rows = load_dataset(DatasetConfig())
    assert _splits(rows) == {"train": 540, "validation": 60, "test": 200}
    assert rows[0].example_id == "arithmetic-train-00000" and rows[0].dataset == "arithmetic"
    assert answer_type(DatasetConfig()) == "equation"


def test_carved_arithmetic_validation_mixes_every_template():
    validation = [row for row in load_dataset(DatasetConfig()) if row.split == "validation"]
    operators = Counter(("( (" in row.label, row.label.split()[-3]) for row in validation)
    assert len(operators) == 5 and min(operators.values()) >= 6  # 60 rows over 5 templates


def test_arithmetic_honours_limit_and_sizes():
    config = DatasetConfig.model_validate({"arithmetic": {"train": 30, "test": 10}, "limit": 20})
    assert _splits(load_dataset(config)) == {"train": 18, "validation": 2, "test": 10}


def test_more_arithmetic_problems_keep_every_earlier_split():
    def splits(train: int, **settings) -> dict[str, str]:
        config = DatasetConfig.model_validate({"arithmetic": {"train": train}, **settings})
        return {row.example_id: row.split for row in load_dataset(config)}

    small, large = splits(10), splits(200)
    assert Counter(small.values()) == {"train": 9, "validation": 1, "test": 200}
    assert all(large[example_id] == split for example_id, split in small.items())
    assert Counter(splits(200, validation_fraction=0.25).values())["validation"] == 50
    assert splits(200, validation_seed=1) != large


def test_unknown_split_is_refused():
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset(DatasetConfig(splits=["dev"]))


# ---- custom files --------------------------------------------------------------------------

RECORDS = [
    {"qid": "a", "q": "How much is 2 + 2?", "y": 4},
    {"qid": "b", "q": "How much is 3 + 5?", "y": 8},
]


def test_custom_jsonl_with_field_mapping(tmp_path):
    content = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    config = _custom(
        tmp_path, "d.jsonl", content, label_type="number", id_field="qid", input_field="q", label_field="y"
    )
    rows = load_dataset(config)
    assert [(r.example_id, r.input, r.label, r.dataset) for r in rows] == [
        ("a", "How much is 2 + 2?", "4", "custom"),
        ("b", "How much is 3 + 5?", "8", "custom"),
    ]
    assert answer_type(config) == "number"


def test_custom_json_array_csv_and_parquet_read_alike(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    csv_text = "qid,q,y\n" + "".join(f'{r["qid"]},"{r["q"]}",{r["y"]}\n' for r in RECORDS)
    loaded = []
    for name, content in [("d.json", json.dumps(RECORDS)), ("d.csv", csv_text), ("d.parquet", None)]:
        config = (
            _custom(tmp_path, name, content, input_field="q", label_field="y")
            if content is not None
            else DatasetConfig(
                name="custom",
                splits=["train"],
                validation_fraction=0.0,
                custom=CustomConfig(files={"train": str(tmp_path / name)}, input_field="q", label_field="y"),
            )
        )
        loaded.append([(r.example_id, r.input, r.label) for r in load_dataset(config)])
    assert (
        loaded[0]
        == loaded[1]
        == loaded[2]
        == [
            ("custom-train-00000", "How much is 2 + 2?", "4"),
            ("custom-train-00001", "How much is 3 + 5?", "8"),
        ]
    )


def test_custom_split_without_a_file_is_named(tmp_path):
    config = _custom(tmp_path, "d.jsonl", json.dumps(RECORDS[0]), input_field="q", label_field="y")
    config = config.model_copy(update={"splits": ["train", "test"]})
    with pytest.raises(DatasetError, match="no 'test' file"):
        load_dataset(config)


@pytest.mark.parametrize(
    ("name", "content", "settings", "message"),
    [
        ("d.jsonl", "", {}, r"d\.jsonl: file is empty"),
        ("d.jsonl", "\n  \n", {}, r"d\.jsonl: file is empty"),
        ("d.csv", "input,label\n", {}, r"d\.csv: file has no rows"),
        ("d.jsonl", '{"input": "q"}\n', {}, r"d\.jsonl row 0: missing field 'label'"),
        (
            "d.jsonl",
            '{"input": "q", "label": "x"}\n{"label": "y"}\n',
            {},
            r"d\.jsonl row 1: missing field 'input'",
        ),
        ("d.jsonl", '{"input": "  ", "label": "x"}\n', {}, r"row 0: field 'input' must be non-empty text"),
        (
            "d.jsonl",
            '{"input": "q", "label": "x"}\n{"input": "q", oops}\n',
            {},
            r"d\.jsonl row 1 \(line 2\): not valid JSON",
        ),
        (
            "d.jsonl",
            b'{"input": "q", "label": "x"}\n{"input": "caf\xe9", "label": "y"}\n',
            {},
            r"d\.jsonl: line 2: not valid UTF-8",
        ),
        (
            "d.jsonl",
            '{"input": "q", "label": "( 2 + )"}\n',
            {"label_type": "equation"},
            r"row 0: label '\( 2 \+ \)' is not an arithmetic equation",
        ),
        (
            "d.jsonl",
            '{"input": "q", "label": "import os"}\n',
            {"label_type": "equation"},
            r"row 0: label 'import os' is not an arithmetic equation",
        ),
        (
            "d.jsonl",
            '{"input": "q", "label": "seven"}\n',
            {"label_type": "number"},
            r"row 0: label 'seven' is not a number",
        ),
        (
            "d.jsonl",
            '{"id": "a", "input": "q", "label": "x"}\n{"id": "a", "input": "r", "label": "y"}\n',
            {"id_field": "id"},
            r"d\.jsonl row 1: duplicate id 'a' \(first seen at .*d\.jsonl row 0\)",
        ),
        ("d.jsonl", "[1, 2]\n", {}, r"row 0: expected an object"),
        ("d.txt", "input\tlabel\n", {}, r"unsupported file type '\.txt'"),
        ("d.parquet", b"PAR1 not really", {}, r"d\.parquet: not a readable Parquet file"),
    ],
)
def test_bad_custom_input_names_file_and_row(tmp_path, name, content, settings, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(_custom(tmp_path, name, content, **settings))


def test_missing_custom_file_is_named(tmp_path):
    config = DatasetConfig(
        name="custom", custom=CustomConfig(files={"train": str(tmp_path / "gone.jsonl")}), splits=["train"]
    )
    with pytest.raises(DatasetError, match=r"gone\.jsonl: no such file"):
        load_dataset(config)


@pytest.mark.parametrize(("label", "word"), [(0, "entailment"), (1, "neutral"), (2, "contradiction")])
def test_anli_label_ids(tmp_path, label, word):
    record = {"uid": "u1", "premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": label}
    (tmp_path / "anli1_test.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    [row] = load_dataset(DatasetConfig(name="anli1", path=str(tmp_path), splits=["test"]))
    assert row.label == word and row.example_id == "u1"


@pytest.mark.parametrize("label", [3, -1, "maybe", True])
def test_anli_label_out_of_range_is_refused(tmp_path, label):
    record = {"uid": "u1", "premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": label}
    (tmp_path / "anli1_test.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"anli1_test\.json row 0: label .* is not 0/1/2"):
        load_dataset(DatasetConfig(name="anli1", path=str(tmp_path), splits=["test"]))


def test_cqa_answer_must_be_a_choice(tmp_path):
    record = {"id": "c1", "question": "Where?", "choices": ["a", "b", "c", "d", "e"], "answer": "f"}
    (tmp_path / "cqa_test.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"cqa_test\.json row 0: answer 'f' is not one of the choices"):
        load_dataset(DatasetConfig(name="cqa", path=str(tmp_path), splits=["test"]))


def test_duplicate_ids_across_splits_are_refused(tmp_path):
    record = {"id": "c1", "question": "Where?", "choices": ["a", "b", "c", "d", "e"], "answer": "a"}
    for split in ("train", "test"):
        (tmp_path / f"cqa_{split}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"cqa_test\.json row 0: duplicate id 'c1'"):
        load_dataset(DatasetConfig(name="cqa", path=str(tmp_path), validation_fraction=0.0))


def test_a_custom_validation_file_replaces_the_carved_rows(tmp_path):
    for name in ("train", "validation"):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"input": f"{name} {i}?", "label": "x"}) + "\n" for i in range(10))
        )
    files = {split: str(tmp_path / f"{split}.jsonl") for split in ("train", "validation")}
    rows = load_dataset(DatasetConfig(name="custom", custom=CustomConfig(files=files), splits=["train"]))
    assert _splits(rows) == {"train": 10, "validation": 10}
    assert {row.input.split()[0] for row in rows if row.split == "validation"} == {"validation"}
