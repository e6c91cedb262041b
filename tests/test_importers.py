import json
import re
from pathlib import Path

import pytest

from storage import Store, queries
from tasks.answers import answers_match, equations_match
from tasks.config import CustomConfig, DatasetConfig
from tasks.data.datasets import DatasetError
from tasks.data.importers import import_dss, import_tot, tot_question

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOT_SAMPLE = FIXTURES / "data_tot_sample.json"


def _dss_reference_answer(text: str) -> str:
    """DSS's own SVAMP parse (data_utils.py): the text before "Q:", split once at "The answer is",
    then the greedy "(...)" span; anything else is no answer."""
    parts = text.split("Q:")[0].rstrip().split("The answer is")
    found = re.search(r"\(.*\)", parts[1]) if len(parts) == 2 else None
    return found.group(0) if found else " "


@pytest.fixture
def svamp(shared_data) -> DatasetConfig:
    return DatasetConfig(name="svamp", path=str(shared_data / "svamp"))


def test_dss_import_reproduces_the_recorded_svamp_rationales_and_labels(svamp, shared_data, tmp_path):
    store = Store(str(tmp_path))
    summary = import_dss(store, svamp)
    assert (summary.examples_written, summary.cots_written, summary.cots_read) == (1000, 1000, 1000)
    assert queries.status(store).examples_by_split == {"train": 720, "validation": 80, "test": 200}

    # Row alignment: the stored raw text of row i is line i of the recorded files, next to gold label i.
    # DSS's own parse of those pairs gives the accuracy its data reports: 73.5% train, 74.0% test.
    for split, files, expected in [
        ("train", ["train_CoT_0", "train_CoT_1"], 588),
        ("test", ["test_CoT_0"], 148),
    ]:
        texts = [
            t
            for name in files
            for t in json.loads((shared_data / "svamp" / "llm" / f"{name}.json").read_text())
        ]
        _, rows = store.fetch(
            "SELECT c.text, x.label, x.source FROM cots c JOIN examples x USING (example_id) "
            "WHERE x.source LIKE ? ORDER BY x.example_id",
            [f"svamp_{split}.json:%"],
        )
        assert [text for text, _, _ in rows] == texts
        assert [int(source.split(":")[1]) for _, _, source in rows] == list(range(len(texts)))
        assert sum(equations_match(_dss_reference_answer(text), label) for text, label, _ in rows) == expected

    # Parsed like live outputs: about three in four teacher answers are right (this parser also reads
    # "(16 * 17) * 4" whole, where DSS's regex stops at "(16 * 17)", hence a little higher).
    scores = {}
    for splits in (("train", "validation"), ("test",)):
        gold = {r.example_id: r.label for split in splits for r in queries.label_rows(store, split)}
        teacher = [
            r for split in splits for r in queries.cot_rows(store, split, n_cots=1, labels="teacher")[0]
        ]
        scores[splits[0]] = sum(equations_match(r.label, gold[r.example_id]) for r in teacher) / len(gold)
    assert 0.72 <= scores["train"] <= 0.78 and 0.72 <= scores["test"] <= 0.80
    assert summary.cots_matching_gold == round(scores["train"] * 800 + scores["test"] * 200)


def test_dss_rationales_stop_at_the_answer_sentence(svamp, tmp_path):
    store = Store(str(tmp_path))
    import_dss(store, svamp.model_copy(update={"limit": 5}))
    [first] = queries.cots_for_examples(store, ["svamp-train-00000"])
    assert "\n\nQ: There are 120 students" in first.text  # PaLM rambles into a new question
    assert first.rationale.endswith("84 / 2 = 42. The answer is (84 / 2).") and "Q:" not in first.rationale
    assert first.answer is not None and equations_match(first.answer, "( 84.0 / 2.0 )")
    assert (first.source, first.teacher_model, first.prompt_version, first.cot_index) == (
        "dss",
        "palm-540b",
        "dss",
        0,
    )


def test_dss_unparseable_rationales_are_kept_with_their_reason(svamp, tmp_path):
    store = Store(str(tmp_path))
    summary = import_dss(store, svamp)
    _, rejects = store.fetch("SELECT reason FROM rejects")
    assert summary.cots_unparseable == len(rejects) > 0
    assert all(reason for (reason,) in rejects)


def test_dss_import_twice_writes_nothing_new(svamp, tmp_path):
    store = Store(str(tmp_path))
    import_dss(store, svamp.model_copy(update={"limit": 30}))
    files = {table: len(store.files(table)) for table in ("examples", "cots")}
    again = import_dss(store, svamp.model_copy(update={"limit": 30}))
    assert (again.examples_written, again.cots_written, again.cots_read) == (0, 0, 60)
    assert {table: len(store.files(table)) for table in ("examples", "cots")} == files


def _tiny_dss(folder: Path, rationales: dict[str, list] | None) -> DatasetConfig:
    rows = [{"input": f"Ann has {n} pens.\nHow many pens?", "label": f"( {n}.0 + 0.0 )"} for n in (3, 4, 5)]
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (folder / f"svamp_{split}.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name, texts in (rationales or {}).items():
        (folder / "llm").mkdir(exist_ok=True)
        (folder / "llm" / f"{name}.json").write_text(json.dumps(texts))
    return DatasetConfig(name="svamp", path=str(folder), validation_fraction=0.0)


def test_dss_missing_rationales_are_named(tmp_path):
    config = _tiny_dss(tmp_path / "svamp", None)
    with pytest.raises(DatasetError, match=r"llm/train_CoT_0\.json: no such file"):
        import_dss(Store(str(tmp_path / "store")), config)
    assert not (tmp_path / "store").exists()


def test_dss_rationales_must_align_with_rows(tmp_path):
    texts = ["The answer is (3 + 0).", "The answer is (4 + 0)."]
    config = _tiny_dss(tmp_path / "svamp", {"train_CoT_0": texts, "test_CoT_0": texts + ["x"]})
    with pytest.raises(DatasetError, match=r"2 rationales for the 3 rows of .*svamp_train\.json"):
        import_dss(Store(str(tmp_path / "store")), config)


def test_dss_rationale_files_concatenate_in_order(tmp_path):
    texts = ["So 3. The answer is (3 + 0).", "So 4. The answer is (4 + 0).", "So 5. The answer is (5 + 0)."]
    config = _tiny_dss(
        tmp_path / "svamp", {"train_CoT_0": texts[:2], "train_CoT_1": texts[2:], "test_CoT_0": texts}
    )
    store = Store(str(tmp_path / "store"))
    summary = import_dss(store, config)
    assert summary.cots_matching_gold == 6
    assert [
        c.text for c in queries.cots_for_examples(store, [f"svamp-train-{i:05d}" for i in range(3)])
    ] == texts


def test_dss_rationales_must_be_strings(tmp_path):
    config = _tiny_dss(tmp_path / "svamp", {"train_CoT_0": ["a", 7, "c"]})
    with pytest.raises(DatasetError, match=r"train_CoT_0\.json item 1: expected a string"):
        import_dss(Store(str(tmp_path / "store")), config)


def test_dss_import_needs_a_dss_dataset(tmp_path):
    with pytest.raises(DatasetError, match="import dss needs"):
        import_dss(Store(str(tmp_path)), DatasetConfig())


# ---- Mind's Mirror Tree-of-Thoughts --------------------------------------------------------


@pytest.fixture
def questions() -> DatasetConfig:
    custom = CustomConfig(
        files={"train": str(FIXTURES / "data_tot_questions.jsonl")}, id_field="id", label_type="equation"
    )
    return DatasetConfig(name="custom", custom=custom, splits=["train"], validation_fraction=0.0)


def test_tot_import_stores_every_cot_and_each_of_its_evaluations(questions, tmp_path):
    store = Store(str(tmp_path))
    summary = import_tot(store, questions, [TOT_SAMPLE])
    assert (summary.examples_written, summary.cots_written, summary.evaluations_written) == (2, 5, 8)
    assert (summary.cots_unparseable, summary.evaluations_unparseable, summary.cots_matching_gold) == (
        1,
        1,
        3,
    )

    cots = queries.cots_for_examples(store, ["q1", "q2"])
    assert [(c.example_id, c.cot_index, c.source) for c in cots] == [
        ("q1", 0, "tot"),
        ("q1", 1, "tot"),
        ("q1", 2, "tot"),
        ("q2", 0, "tot"),
        ("q2", 1, "tot"),
    ]
    assert cots[2].answer is not None and equations_match(
        cots[2].answer, "12 - 5"
    )  # a wrong CoT still parses
    assert cots[4].parse_error is not None  # no "The answer is" sentence
    _, verdicts = store.fetch(
        "SELECT c.cot_index, v.eval_index, v.verdict FROM evaluations v "
        "JOIN cots c ON c.key = v.cot_key WHERE v.example_id = 'q1' ORDER BY 1, 2"
    )
    assert verdicts == [
        (0, 0, "correct"),
        (0, 1, "correct"),
        (1, 0, "correct"),
        (1, 1, "uncertain"),
        (2, 0, "wrong"),
        (2, 1, None),
    ]


def test_tot_imports_feed_the_self_evaluation_training_set(questions, tmp_path):
    store = Store(str(tmp_path))
    import_tot(store, questions, [TOT_SAMPLE])
    pairs, excluded = queries.self_eval_rows(store, "train")
    assert len(pairs) == 6 and excluded == 2
    assert pairs[0].question.startswith("Tom has 12 marbles") and pairs[0].cot_text.endswith("(12 + 5).")
    assert {p.verdict for p in pairs} == {"correct", "uncertain", "wrong"}


def test_tot_import_twice_writes_nothing_new(questions, tmp_path):
    store = Store(str(tmp_path))
    import_tot(store, questions, [TOT_SAMPLE])
    again = import_tot(store, questions, [TOT_SAMPLE, TOT_SAMPLE])
    assert (again.examples_written, again.cots_written, again.evaluations_written) == (0, 0, 0)
    assert queries.status(store).rows["evaluations"] == 8


def test_tot_question_not_in_the_dataset_is_named_and_nothing_is_written(questions, tmp_path):
    records = json.loads(TOT_SAMPLE.read_text())
    records[1]["steps"][0]["x"] = '"input":"Who painted the ceiling?"\n'
    broken = tmp_path / "tot.json"
    broken.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"tot\.json record 1: question not found .*Who painted"):
        import_tot(Store(str(tmp_path / "store")), questions, [broken])
    assert not (tmp_path / "store").exists()


def test_tot_evaluations_must_line_up_with_cots(questions, tmp_path):
    records = json.loads(TOT_SAMPLE.read_text())
    records[0]["steps"][0]["value_outputs_list"].pop()
    broken = tmp_path / "tot.json"
    broken.write_text(json.dumps(records))
    with pytest.raises(
        DatasetError, match=r"record 0 step 0: value_outputs_list must hold one list per new_ys"
    ):
        import_tot(Store(str(tmp_path / "store")), questions, [broken])


def test_tot_conflicting_cots_for_one_example_are_refused(questions, tmp_path):
    records = json.loads(TOT_SAMPLE.read_text())
    records[0]["steps"][0]["new_ys"][0] = "A different first thought. The answer is (12 + 5)."
    other = tmp_path / "other.json"
    other.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match="already has a different chain of thought 0"):
        import_tot(Store(str(tmp_path / "store")), questions, [TOT_SAMPLE, other])


@pytest.mark.parametrize("content", ["{}", "[]", "not json", '[{"steps": "no"}]'])
def test_tot_malformed_files_are_named(questions, tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=r"bad\.json"):
        import_tot(Store(str(tmp_path / "store")), questions, [path])


@pytest.mark.parametrize(
    ("record", "question"),
    [
        ({"steps": [{"x": '"input":"Line one\\nLine two?"\n'}]}, "Line one\nLine two?"),
        ({"steps": [{"x": "A plain question?"}]}, "A plain question?"),
        ({"question": "Given directly?", "steps": []}, "Given directly?"),
        ({"steps": []}, None),
    ],
)
def test_tot_question_forms(record, question):
    assert tot_question(record) == question


@pytest.mark.parametrize(
    ("name", "splits", "split", "low", "high"),
    [
        ("cqa", ["test"], "test", 0.74, 0.81),  # DSS-style parsing: 77.2%
        ("anli1", ["validation", "test"], "validation", 0.63, 0.70),  # 66.8%
        ("anli1", ["validation", "test"], "test", 0.62, 0.69),  # 65.6%
    ],
)
def test_dss_teacher_accuracy_on_choice_and_nli_data(shared_data, tmp_path, name, splits, split, low, high):
    store = Store(str(tmp_path))
    import_dss(store, DatasetConfig(name=name, path=str(shared_data / name), splits=splits))
    kind = "choice" if name == "cqa" else "nli"
    gold = {row.example_id: row.label for row in queries.label_rows(store, split)}
    teacher, _ = queries.cot_rows(store, split, n_cots=1, labels="teacher")
    assert low <= sum(answers_match(kind, r.label, gold[r.example_id]) for r in teacher) / len(gold) <= high
