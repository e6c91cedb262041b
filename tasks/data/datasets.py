"""Load a dataset into ExampleRows, validating every row before any teacher call is paid for.

Datasets: the built-in arithmetic generator, svamp / cqa / anli1 in the Distilling-Step-by-Step
(DSS) layout or from the Hugging Face Hub (tasks.data.hub), and custom files (JSONL, JSON, CSV,
Parquet) with a field mapping.

Validation is carved out of a train file exactly like DSS's run.py
(`train_test_split(test_size=0.1, seed=0)`), so SVAMP's 800 train rows become the same 720 train /
80 validation rows as in DSS and Mind's Mirror. The choice is made over the whole file, so `limit`
never moves a row between splits; generated arithmetic problems hold out every tenth problem, so
asking for more problems never moves one either. anli1 (and a custom dataset that names a
validation file) has a validation file of its own instead.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from storage.records import ExampleRow
from tasks.answers import EquationError, evaluate_equation
from tasks.config import DatasetConfig
from tasks.data.arithmetic import generate_problems
from tasks.data.files import DatasetError, read_records

NLI_LABELS = ("entailment", "neutral", "contradiction")  # ANLI's label ids 0, 1, 2
DSS_DATASETS = ("svamp", "cqa", "anli1")
ANSWER_TYPES = {"arithmetic": "equation", "svamp": "equation", "cqa": "choice", "anli1": "nli"}
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSource:
    """The rows read from one file (or generator split), in file order.

    `name` is the file's own split name ("train", "valid", "test"). rows[i] is row i of the file
    (only the first `limit` rows are read); its `split` may differ from `name` (train rows carved
    out for validation). `total_rows` counts the whole file, for checks of row-aligned files.
    """

    name: str
    path: str
    rows: tuple[ExampleRow, ...]
    total_rows: int


def answer_type(cfg: DatasetConfig) -> str:
    """equation | choice | nli | number | text."""
    if cfg.name == "custom":
        return cfg.custom.label_type
    return ANSWER_TYPES[cfg.name]


def load_dataset(cfg: DatasetConfig) -> list[ExampleRow]:
    """Every example of the configured splits (train includes its carved validation rows)."""
    wanted = wanted_splits(cfg)
    return [row for source in load_sources(cfg) for row in source.rows if row.split in wanted]


def wanted_splits(cfg: DatasetConfig) -> set[str]:
    """The splits load_dataset returns: asking for train brings its validation rows along (they
    come from the train file, and the student needs them to pick its best checkpoint)."""
    unknown = [split for split in cfg.splits if split not in SPLITS]
    if unknown:
        raise DatasetError(f"dataset.splits: unknown split(s) {unknown}; use train, validation and/or test")
    wanted = set(cfg.splits)
    return wanted | {"validation"} if "train" in wanted else wanted


def load_sources(cfg: DatasetConfig) -> list[SplitSource]:
    """The files behind the configured splits, rows in file order (for importers that align by row)."""
    wanted = wanted_splits(cfg)
    if cfg.name == "arithmetic":
        sources = _arithmetic_sources(cfg, wanted)
    elif cfg.name == "custom":
        sources = _custom_sources(cfg, wanted)
    else:
        sources = _dss_sources(cfg, wanted)
    _check_unique_ids(sources)
    return sources


# ---- sources -------------------------------------------------------------------------------


def _files_for(wanted: set[str], own_validation: bool) -> list[str]:
    """Which file splits to read: validation comes from train unless the dataset ships its own."""
    files = []
    if "train" in wanted or ("validation" in wanted and not own_validation):
        files.append("train")
    if own_validation and wanted & {"train", "validation"}:
        files.append("validation")
    if "test" in wanted:
        files.append("test")
    return files


def _arithmetic_sources(cfg: DatasetConfig, wanted: set[str]) -> list[SplitSource]:
    settings = cfg.arithmetic
    sources = []
    for split in _files_for(wanted, own_validation=False):
        count = settings.train if split == "train" else settings.test
        problems = generate_problems(min(count, cfg.limit or count), settings.seed, split, settings.max_number)
        where = f"arithmetic(seed={settings.seed})/{split}"
        rows = [
            ExampleRow(
                example_id=p.id,
                split=split,
                input=p.question,
                label=p.equation,
                dataset="arithmetic",
                source=f"{where}:{i}",
            )
            for i, p in enumerate(problems)
        ]
        sources.append(SplitSource(split, where, tuple(rows), len(rows)))
    return _carve_validation(sources, cfg, spaced_validation_rows)


def _dss_sources(cfg: DatasetConfig, wanted: set[str]) -> list[SplitSource]:
    """svamp / cqa / anli1 from a DSS folder or, with dataset.hub, from the Hugging Face Hub (whose
    rows tasks.data.hub turns into the records of the DSS files, in their order)."""
    own_validation = cfg.name == "anli1"  # DSS ships anli1_valid.json; the others carve it
    files = {("valid" if split == "validation" else split): split for split in _files_for(wanted, own_validation)}
    if cfg.hub:
        from tasks.data.hub import hub_records  # needs the optional `datasets` library

        read = hub_records(cfg, list(files))
    else:
        read = _folder_records(cfg, files)
    convert = {"svamp": _svamp_row, "cqa": _cqa_row, "anli1": _anli_row}[cfg.name]
    sources = []
    for file_split, split in files.items():
        records, total, where_split = read[file_split]
        rows = []
        for row, record in enumerate(records):
            example_id, text, label = convert(record, f"{where_split} row {row}")
            rows.append(
                ExampleRow(
                    example_id=example_id or f"{cfg.name}-{file_split}-{row:05d}",
                    split=split,
                    input=text,
                    label=label,
                    dataset=cfg.name,
                    source=f"{Path(where_split).name}:{row}",
                )
            )
        sources.append(SplitSource(file_split, where_split, tuple(rows), total))
    return _carve_validation(sources, cfg)


def _folder_records(cfg: DatasetConfig, files: dict[str, str]) -> dict[str, tuple[list[dict], int, str]]:
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DatasetError(
            f"dataset.path {cfg.path}: no such folder (expected the DSS layout with {cfg.name}_*.json)"
        )
    read = {}
    for file_split, split in files.items():
        path = folder / f"{cfg.name}_{file_split}.json"
        if not path.is_file():
            raise DatasetError(f"{path}: no such file; add it or remove {split!r} from dataset.splits")
        read[file_split] = (*read_records(path, cfg.limit), str(path))
    return read


def _custom_sources(cfg: DatasetConfig, wanted: set[str]) -> list[SplitSource]:
    custom = cfg.custom
    unknown = [split for split in custom.files if split not in SPLITS]
    if unknown:
        raise DatasetError(
            f"dataset.custom.files: unknown split(s) {unknown}; use train, validation and/or test"
        )
    own_validation = "validation" in custom.files
    sources = []
    for split in _files_for(wanted, own_validation):
        if split not in custom.files:
            raise DatasetError(
                f"dataset.custom.files has no {split!r} file; add one or drop {split!r} from splits"
            )
        path = Path(custom.files[split])
        records, total = read_records(path, cfg.limit)
        rows = []
        for row, record in enumerate(records):
            where = f"{path} row {row}"
            text = _text_field(record, custom.input_field, where)
            label = _label(_field(record, custom.label_field, where), custom.label_type, where)
            example_id = None
            if custom.id_field is not None:
                example_id = str(_field(record, custom.id_field, where)).strip()
                if not example_id:
                    raise DatasetError(f"{where}: field {custom.id_field!r} is empty")
            rows.append(
                ExampleRow(
                    example_id=example_id or f"custom-{split}-{row:05d}",
                    split=split,
                    input=text,
                    label=label,
                    dataset="custom",
                    source=f"{path.name}:{row}",
                )
            )
        sources.append(SplitSource(split, str(path), tuple(rows), total))
    return _carve_validation(sources, cfg)


def _carve_validation(
    sources: list[SplitSource],
    cfg: DatasetConfig,
    held_out: Callable[[int, float, int], set[int]] | None = None,
) -> list[SplitSource]:
    """Mark validation_fraction of the train file's rows "validation", unless the dataset has a
    validation file of its own. The choice is made over the whole file (total_rows), so a row
    keeps its split whatever `limit` is."""
    if cfg.validation_fraction == 0 or any(s.name in ("valid", "validation") for s in sources):
        return sources
    result = []
    for source in sources:
        if source.name == "train" and source.rows:
            picked = (held_out or dss_validation_rows)(
                source.total_rows, cfg.validation_fraction, cfg.validation_seed
            )
            rows = tuple(
                replace(r, split="validation") if i in picked else r for i, r in enumerate(source.rows)
            )
            source = replace(source, rows=rows)
        result.append(source)
    return result


def dss_validation_rows(n: int, fraction: float, seed: int) -> set[int]:
    """The rows DSS holds out: HF `train_test_split(test_size=fraction, seed=seed)` takes the first
    ceil(fraction * n) positions of numpy's default_rng(seed) permutation."""
    # round() first so that float noise (0.1 * 30 = 3.0000000000000004) does not add a row
    count = min(math.ceil(round(fraction * n, 9)), n - 1)
    return {int(i) for i in np.random.default_rng(seed).permutation(n)[:count]}


def spaced_validation_rows(n: int, fraction: float, seed: int) -> set[int]:
    """One row in every block of 1/fraction consecutive rows, at a position within the block drawn
    from (seed, block): floor(fraction * n) rows or one more, and growing n keeps the earlier choices.
    The position varies so that the generator's template rotation cannot line up with the choice
    (every 10th row would have been a single template)."""
    step = Fraction(fraction).limit_denominator(10_000)
    picked = set()
    block = 0
    while (start := math.ceil(block / step)) < n:
        size = math.ceil((block + 1) / step) - start  # the rows i with floor(i * fraction) == block
        offset = int.from_bytes(hashlib.sha256(f"{seed}:{block}".encode()).digest()[:8], "big") % size
        if start + offset < n:
            picked.add(start + offset)
        block += 1
    return picked


def _check_unique_ids(sources: list[SplitSource]) -> None:
    first_seen: dict[str, str] = {}
    for source in sources:
        for row in source.rows:
            where = f"{source.path} row {row.source.rsplit(':', 1)[-1]}"
            if row.example_id in first_seen:
                raise DatasetError(
                    f"{where}: duplicate id {row.example_id!r} (first seen at {first_seen[row.example_id]})"
                )
            first_seen[row.example_id] = where


# ---- DSS rows ------------------------------------------------------------------------------


def _svamp_row(record: dict, where: str) -> tuple[str | None, str, str]:
    return (
        None,
        _text_field(record, "input", where),
        _label(_field(record, "label", where), "equation", where),
    )


def _cqa_row(record: dict, where: str) -> tuple[str | None, str, str]:
    question = _text_field(record, "question", where)
    choices = _field(record, "choices", where)
    if not isinstance(choices, list) or len(choices) != 5 or not all(isinstance(c, str) for c in choices):
        raise DatasetError(f"{where}: field 'choices' must be a list of 5 strings")
    answer = _text_field(record, "answer", where)
    if answer not in choices:
        raise DatasetError(f"{where}: answer {answer!r} is not one of the choices {choices}")
    lettered = "\n".join(f"({letter}) {choice}" for letter, choice in zip("abcde", choices, strict=True))
    return _optional_id(record, "id", where), f"{question}\nAnswer Choices:\n{lettered}", answer


def _anli_row(record: dict, where: str) -> tuple[str | None, str, str]:
    premise = _text_field(record, "premise", where)
    hypothesis = _text_field(record, "hypothesis", where)
    label = _label(_field(record, "label", where), "nli", where)
    return _optional_id(record, "uid", where), f"Premise: {premise}\nHypothesis: {hypothesis}", label


# ---- fields and labels ---------------------------------------------------------------------


def _field(record: dict, name: str, where: str):
    if name not in record or record[name] is None or record[name] == "":
        present = ", ".join(sorted(record)) or "none"
        raise DatasetError(f"{where}: missing field {name!r} (fields present: {present})")
    return record[name]


def _text_field(record: dict, name: str, where: str) -> str:
    value = _field(record, name, where)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: field {name!r} must be non-empty text, got {value!r}")
    return value


def _optional_id(record: dict, name: str, where: str) -> str | None:
    if name not in record:
        return None
    return str(_field(record, name, where))


def _label(value, label_type: str, where: str) -> str:
    if label_type == "nli":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(NLI_LABELS):
            return NLI_LABELS[value]
        if isinstance(value, str) and value.strip().lower() in NLI_LABELS:
            return value.strip().lower()
        raise DatasetError(f"{where}: label {value!r} is not 0/1/2 or one of {', '.join(NLI_LABELS)}")
    text = (
        str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    )
    if not text:
        raise DatasetError(f"{where}: label {value!r} is not usable text")
    if label_type == "equation":
        try:
            evaluate_equation(text)
        except EquationError as error:
            raise DatasetError(f"{where}: label {text!r} is not an arithmetic equation: {error}") from None
    elif label_type == "number":
        try:
            number = float(text)
        except ValueError:
            raise DatasetError(f"{where}: label {text!r} is not a number") from None
        if not math.isfinite(number):
            raise DatasetError(f"{where}: label {text!r} is not a finite number")
    return text
