"""Import recorded teacher outputs into the store, parsed exactly like live ones.

* `dss`: Distilling-Step-by-Step's PaLM 540B rationales, `<path>/llm/<split>_CoT_<i>.json` (JSON
  arrays of strings, concatenated in i order, row-aligned with `<name>_<split>.json`; one CoT per
  example, rambling past the answer into the next few-shot "Q:").
* `tot`: Mind's Mirror's Tree-of-Thoughts files, a JSON list of records whose `steps[]` hold the
  question (`x`, written as `"input":"<json string>"`), the chains of thought (`new_ys`) and, per
  chain, its self-evaluations (`value_outputs_list`).

Rows land in the same tables as generated ones, with `source` "dss" or "tot". Keys hash what
identifies a recorded sample, so importing twice writes nothing new.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storage import CotRow, EvaluationRow, ExampleRow, Store, queries
from tasks.answers import answers_match
from tasks.config import DatasetConfig
from tasks.data.datasets import (
    DSS_DATASETS,
    DatasetError,
    answer_type,
    load_dataset,
    load_sources,
    wanted_splits,
)
from tasks.teacher.parsing import parse_cot, parse_evaluation

DSS_TEACHER = "palm-540b"
TOT_TEACHER = "gpt-3.5-turbo"  # the teacher of Mind's Mirror's released files


@dataclass(frozen=True)
class ImportSummary:
    source: str  # dss | tot
    examples_written: int
    cots_written: int
    evaluations_written: int
    cots_read: int
    cots_unparseable: int
    evaluations_read: int
    evaluations_unparseable: int
    cots_matching_gold: int  # parsed teacher answers equal to the gold label

    def describe(self) -> str:
        parsed = self.cots_read - self.cots_unparseable
        accuracy = f"{100 * self.cots_matching_gold / parsed:.1f}%" if parsed else "n/a"
        lines = [
            (
                f"imported {self.source}: read {self.cots_read} chains of thought ({self.cots_unparseable} "
                f"unparseable, kept with their reason), teacher answers matching gold: {accuracy} of parsed"
            ),
            f"wrote {self.examples_written} examples, {self.cots_written} chains of thought",
        ]
        if self.evaluations_read:
            lines[0] += (
                f"; {self.evaluations_read} self-evaluations ({self.evaluations_unparseable} unparseable)"
            )
            lines[1] += f", {self.evaluations_written} self-evaluations"
        return "\n".join(lines) + " (rows already stored are skipped)"


def recorded_key(*parts: object) -> str:
    """A stable key for a recorded sample: the same parts always give the same key."""
    payload = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _read_json(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: line {error.lineno}: not valid JSON: {error.msg}") from None


def _store_new(
    store: Store, examples: list[ExampleRow], cots: list[CotRow], evaluations: list[EvaluationRow]
):
    """Append what the store lacks: examples first, so every CoT's example is stored before it."""
    new_examples = queries.new_examples(store, examples)
    store.append(new_examples)
    missing = queries.missing_keys(store, "cots", [cot.key for cot in cots])
    new_cots = [cot for cot in cots if cot.key in missing]
    store.append(new_cots)
    missing = queries.missing_keys(store, "evaluations", [evaluation.key for evaluation in evaluations])
    new_evaluations = [evaluation for evaluation in evaluations if evaluation.key in missing]
    store.append(new_evaluations)
    return len(new_examples), len(new_cots), len(new_evaluations)


def _summary(source, written, cots, evaluations, examples_by_id, kind) -> ImportSummary:
    matching = sum(
        cot.parse_error is None and answers_match(kind, cot.answer, examples_by_id[cot.example_id].label)
        for cot in cots
    )
    return ImportSummary(
        source=source,
        examples_written=written[0],
        cots_written=written[1],
        evaluations_written=written[2],
        cots_read=len(cots),
        cots_unparseable=sum(cot.parse_error is not None for cot in cots),
        evaluations_read=len(evaluations),
        evaluations_unparseable=sum(evaluation.parse_error is not None for evaluation in evaluations),
        cots_matching_gold=matching,
    )


# ---- Distilling-Step-by-Step ---------------------------------------------------------------


def _dss_rationales(folder: Path, split: str) -> tuple[list[str], str]:
    files = []
    while (folder / "llm" / f"{split}_CoT_{len(files)}.json").is_file():
        files.append(folder / "llm" / f"{split}_CoT_{len(files)}.json")
    if not files:
        raise DatasetError(
            f"{folder / 'llm' / f'{split}_CoT_0.json'}: no such file (DSS rationales for {split!r})"
        )
    texts: list[str] = []
    for path in files:
        batch = _read_json(path)
        if not isinstance(batch, list):
            raise DatasetError(f"{path}: expected a JSON array of strings")
        for index, text in enumerate(batch):
            if not isinstance(text, str):
                raise DatasetError(f"{path} item {index}: expected a string, got {type(text).__name__}")
        texts.extend(batch)
    names = ", ".join(path.name for path in files)
    return texts, f"{folder / 'llm'}/{{{names}}}"


def import_dss(store: Store, cfg: DatasetConfig) -> ImportSummary:
    """Store the DSS PaLM rationales of the configured splits (one CoT per example, cot_index 0)."""
    if cfg.name not in DSS_DATASETS:
        raise DatasetError(f"import dss needs dataset.name in {DSS_DATASETS}, not {cfg.name!r}")
    if not cfg.path:
        raise DatasetError("import dss reads the rationales in a DSS folder's llm/; set dataset.path to that "
                           "folder (dataset.hub has the examples only)")
    kind = answer_type(cfg)
    wanted = wanted_splits(cfg)
    examples, cots = [], []
    for source in load_sources(cfg):
        texts, where = _dss_rationales(Path(cfg.path), source.name)
        if len(texts) != source.total_rows:
            raise DatasetError(
                f"{where}: {len(texts)} rationales for the {source.total_rows} rows of {source.path}; "
                "they must be row-aligned"
            )
        for example, text in zip(source.rows, texts[: len(source.rows)], strict=True):
            if example.split not in wanted:
                continue
            parsed = parse_cot(text, kind, question=example.input)
            examples.append(example)
            cots.append(
                CotRow(
                    key=recorded_key("dss", example.example_id, 0),
                    example_id=example.example_id,
                    cot_index=0,
                    text=text,
                    answer=parsed.answer,
                    rationale=parsed.rationale,
                    parse_error=parsed.error,
                    finish_reason=None,
                    teacher_model=DSS_TEACHER,
                    prompt_version="dss",
                    # DSS does not record its sampling settings; zeros mark them unknown.
                    temperature=0.0,
                    top_p=0.0,
                    max_tokens=0,
                    source="dss",
                    call_id=None,
                )
            )
    written = _store_new(store, examples, cots, [])
    return _summary("dss", written, cots, [], {e.example_id: e for e in examples}, kind)


# ---- Mind's Mirror Tree-of-Thoughts --------------------------------------------------------

_INPUT_PREFIX = re.compile(r'^\s*"(?:input|question)"\s*:\s*')


def tot_question(record: dict) -> str | None:
    """The question of a ToT record: `question`, or the first step's `x` ('"input":"..."' or plain)."""
    if isinstance(record.get("question"), str):
        return record["question"]
    steps = record.get("steps")
    x = steps[0].get("x") if isinstance(steps, list) and steps and isinstance(steps[0], dict) else None
    if not isinstance(x, str):
        return None
    prefix = _INPUT_PREFIX.match(x)
    if prefix is None:
        return x
    try:
        value = json.loads(x[prefix.end() :].strip().rstrip(","))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def _normal(text: str) -> str:
    return " ".join(text.split())


def _strings(value, what: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DatasetError(f"{where}: {what} must be a list of strings")
    return value


def import_tot(
    store: Store, cfg: DatasetConfig, files: Sequence[str | Path], *, teacher_model: str = TOT_TEACHER
) -> ImportSummary:
    """Store the CoTs and self-evaluations of Mind's Mirror ToT files, matched to the configured
    dataset's examples by question text. Checks every file before writing anything."""
    if not files:
        raise DatasetError("import tot needs at least one file")
    kind = answer_type(cfg)
    by_question: dict[str, ExampleRow] = {}
    for example in load_dataset(cfg):
        by_question.setdefault(_normal(example.input), example)
    examples: dict[str, ExampleRow] = {}
    cots: dict[str, CotRow] = {}
    evaluations: dict[str, EvaluationRow] = {}
    first_at: dict[tuple[str, int], tuple[str, str]] = {}  # (example, cot_index) -> (key, where)
    for path in map(Path, files):
        records = _read_json(path)
        if not isinstance(records, list) or not records:
            raise DatasetError(f"{path}: expected a non-empty JSON list of Tree-of-Thoughts records")
        for number, record in enumerate(records):
            where = f"{path} record {number}"
            if not isinstance(record, dict) or not isinstance(record.get("steps"), list):
                raise DatasetError(f"{where}: expected an object with a `steps` list")
            question = tot_question(record)
            if question is None:
                raise DatasetError(f"{where}: no question (neither `question` nor a readable `steps[0].x`)")
            example = by_question.get(_normal(question))
            if example is None:
                raise DatasetError(
                    f"{where}: question not found in dataset {cfg.name!r} "
                    f"(splits {sorted(wanted_splits(cfg))}): {question[:80]!r}"
                )
            examples[example.example_id] = example
            cot_index = 0
            for step_number, step in enumerate(record["steps"]):
                at = f"{where} step {step_number}"
                if not isinstance(step, dict):
                    raise DatasetError(f"{at}: expected an object")
                texts = _strings(step.get("new_ys", []), "new_ys", at)
                judged = step.get("value_outputs_list")
                if judged is not None and (not isinstance(judged, list) or len(judged) != len(texts)):
                    raise DatasetError(f"{at}: value_outputs_list must hold one list per new_ys entry")
                for position, text in enumerate(texts):
                    cot = _tot_cot(example, cot_index, text, kind, teacher_model)
                    earlier = first_at.setdefault((example.example_id, cot_index), (cot.key, at))
                    if earlier[0] != cot.key:
                        raise DatasetError(
                            f"{at}: example {example.example_id} already has a different chain of thought "
                            f"{cot_index} at {earlier[1]}; import such files separately"
                        )
                    cots[cot.key] = cot
                    outputs = (
                        _strings(judged[position], f"value_outputs_list[{position}]", at) if judged else []
                    )
                    for eval_index, output in enumerate(outputs):
                        evaluation = _tot_evaluation(cot, eval_index, output, teacher_model)
                        evaluations[evaluation.key] = evaluation
                    cot_index += 1
    written = _store_new(store, list(examples.values()), list(cots.values()), list(evaluations.values()))
    return _summary("tot", written, list(cots.values()), list(evaluations.values()), examples, kind)


def _tot_cot(example: ExampleRow, cot_index: int, text: str, kind: str, teacher_model: str) -> CotRow:
    parsed = parse_cot(text, kind, question=example.input)
    return CotRow(
        key=recorded_key("tot", example.example_id, cot_index, text),
        example_id=example.example_id,
        cot_index=cot_index,
        text=text,
        answer=parsed.answer,
        rationale=parsed.rationale,
        parse_error=parsed.error,
        finish_reason=None,
        teacher_model=teacher_model,
        prompt_version="tot",
        # The files do not record sampling settings; zeros mark them unknown.
        temperature=0.0,
        top_p=0.0,
        max_tokens=0,
        source="tot",
        call_id=None,
    )


def _tot_evaluation(cot: CotRow, eval_index: int, text: str, teacher_model: str) -> EvaluationRow:
    parsed = parse_evaluation(text)
    return EvaluationRow(
        key=recorded_key("tot-evaluation", cot.key, eval_index, text),
        example_id=cot.example_id,
        cot_index=cot.cot_index,
        cot_key=cot.key,
        eval_index=eval_index,
        text=text,
        verdict=parsed.verdict,
        rationale=parsed.rationale,
        parse_error=parsed.error,
        finish_reason=None,
        teacher_model=teacher_model,
        prompt_version="tot",
        temperature=0.0,
        top_p=0.0,
        max_tokens=0,
        source="tot",
        call_id=None,
    )
