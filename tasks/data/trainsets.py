"""The student's training sets, built from what the store holds.

Rows are chosen by provenance (train.sources: where a CoT came from, which teacher, which prompt
version), so a prompt change, a second teacher or an import never adds CoTs to an arm's set unless
the config mixes them on purpose. Unparseable teacher outputs are left out and counted, never
trained on as blank rows. The readers take a Store or a connection to one (storage.queries.Source),
so that an arm's sets, and the scored rows, are read on one connection (read_arm_rows,
read_scored_rows).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import Store, arrow, derived, queries
from storage.queries import Provenance, Source, TrainingRow, TrainingRows
from tasks.answers import answers_match
from tasks.config import ArmConfig, Config
from tasks.data.datasets import answer_type
from tasks.data.noise import add_label_noise
from tasks.teacher.keys import SIMULATED_MODEL
from tasks.teacher.prompts import format_judged_input, prompt_version


@dataclass(frozen=True)
class TrainingSet:
    rows: Sequence[TrainingRow]  # a list, or TrainingRows (Arrow columns) for sets read from the store
    excluded: int  # rows left out because the teacher's output did not parse
    filtered: int = 0  # parsed CoTs an arm's cot_filter left out
    noised: tuple[str, ...] = ()  # examples an arm's label_noise gave a wrong label


# A server names the model that answered: OpenAI a dated snapshot of the one asked for
# ("gpt-4o-mini" -> "gpt-4o-mini-2024-07-18", "gpt-3.5-turbo" -> "gpt-3.5-turbo-0125").
_SNAPSHOT = r"-(\d{4}-\d{2}-\d{2}|\d{4})"


def answered_by(asked: str, stored: str, simulate: bool = False) -> bool:
    """Whether `stored` (the model a reply named) is the model `asked` for: itself, a dated
    snapshot of it, or the built-in simulated teacher when the run simulates its teacher."""
    return stored == asked or re.fullmatch(re.escape(asked) + _SNAPSHOT, stored) is not None or (
        simulate and stored == SIMULATED_MODEL
    )


def provenances(config: Config, store: Source) -> list[Provenance]:
    """train.sources resolved: a `teacher` source without a model or versions means the models that
    answered this run's teacher.model (see answered_by) and the current prompt versions of the
    dataset's answer type."""
    kind = answer_type(config.dataset)
    stored = {row.teacher_model for row in queries.stored_sources(store, "train") if row.source == "teacher"}
    resolved = []
    for source in config.train.sources:
        if source.source != "teacher":
            models = None if source.teacher_model is None else (source.teacher_model,)
            resolved.append(Provenance(source.source, models, source.cot_prompt_version,
                                       source.eval_prompt_version))
            continue
        if source.teacher_model is not None:
            models = (source.teacher_model,)
        else:
            asked, simulate = config.teacher.model, config.teacher.simulate
            models = tuple(sorted(m for m in stored if answered_by(asked, m, simulate))) or (asked,)
        resolved.append(Provenance(
            "teacher", models,
            source.cot_prompt_version or prompt_version(kind, "cot"),
            source.eval_prompt_version or prompt_version(kind, "evaluation"),
        ))
    return resolved


def describe_stored(store: Source, split: str = "train") -> str:
    """What the split's stored CoTs come from, for a message that says which train.sources to name."""
    found = queries.stored_sources(store, split)
    if not found:
        return f"the store has no {split} CoTs"
    return "the store's train CoTs come from " + "; ".join(
        f"source {row.source}, teacher_model {row.teacher_model}, prompt version {row.prompt_version} "
        f"({row.cots} CoTs)" for row in found
    )


def self_eval_set(store: Source, split: str = "train", n_cots: int | None = None,
                  sources: Sequence[Provenance] | None = None, n_evals: int | None = None,
                  chosen: pa.Table | None = None) -> TrainingSet:
    """Input = the question with a chain of thought, label = the teacher's verdict on it,
    rationale = the evaluation text; every CoT (index < n_cots) of `sources` x every evaluation of
    it (index < n_evals). `chosen`: those CoTs (queries.chosen_cots), if already read."""
    tables = queries.self_eval_tables(store, split, n_cots, sources, n_evals, chosen)
    pairs = arrow.where(tables.pairs, pc.invert(tables.pairs.column("excluded")))
    judged = pairs.column("cot").combine_chunks()  # each pair's row of tables.cots
    rows = pa.table({
        # one input per judged CoT, shared by its evaluations
        "example_id": pa.DictionaryArray.from_arrays(judged, tables.cots.column("example_id").combine_chunks()),
        "input": pa.DictionaryArray.from_arrays(judged, _judged_inputs(tables.cots)),
        "label": pairs.column("verdict"),
        "rationale": pairs.column("eval_rationale"),
    })
    return TrainingSet(TrainingRows(rows), tables.pairs.num_rows - pairs.num_rows)


def _judged_inputs(cots: pa.Table) -> pa.Array:
    """The student's input for each judged CoT; none for an unparseable one, whose pairs are left out."""
    questions, texts = cots.column("question").to_pylist(), cots.column("cot_text").to_pylist()
    inputs = arrow.strings(["" if text is None else format_judged_input(question, text)
                            for question, text in zip(questions, texts)])
    unparsed = pc.is_null(cots.column("cot_text")).combine_chunks()
    return pc.if_else(unparsed, pa.nulls(len(inputs), pa.string()), inputs) if unparsed.true_count else inputs


def _cot_rows(cots: pa.Table, labels: Literal["gold", "teacher"]) -> TrainingRows:
    """Input = the question, label = the gold label or the teacher's answer, rationale = the CoT."""
    return TrainingRows(pa.table({
        "example_id": cots.column("example_id"),
        "input": cots.column("input"),
        "label": cots.column("gold" if labels == "gold" else "answer"),
        "rationale": cots.column("rationale"),
    }))


def cot_set(store: Source, split: str = "train", n_cots: int = 1,
            labels: Literal["gold", "teacher"] = "gold",
            sources: Sequence[Provenance] | None = None) -> TrainingSet:
    """Input = the question, label = the gold label or the teacher's answer, rationale = the CoT;
    one row per chain of thought of each of `sources` with index < n_cots."""
    if labels not in ("gold", "teacher"):
        raise ValueError(f"labels must be 'gold' or 'teacher', not {labels!r}")
    cots, excluded = queries.judged_cot_table(store, split, n_cots, sources, verdicts=False)
    return TrainingSet(_cot_rows(cots, labels), excluded)


def label_set(store: Source, split: str) -> TrainingSet:
    """Input = the question, label = the gold label, no rationale (standard fine-tuning, scoring)."""
    return TrainingSet(queries.label_rows(store, split), 0)


def _kept(cots: pa.Table, cot_filter: str | None, kind: str) -> pa.Array | None:
    """Which of `cots` (queries.judged_cot_table) an arm's cot_filter keeps; None: every one."""
    if cot_filter == "teacher_verdict":  # a strict majority of its parsed verdicts
        return pc.greater(pc.multiply(cots.column("said_correct"), 2), cots.column("verdicts"))
    if cot_filter == "gold":
        answers, golds = cots.column("answer").to_pylist(), cots.column("gold").to_pylist()
        return arrow.booleans(answers_match(kind, answer, gold) for answer, gold in zip(answers, golds))
    return None


def _stage2_cots(arm: ArmConfig) -> int:
    """How many CoTs of each example an arm's stage 2 trains on (standard distillation: the first)."""
    return arm.n_cots if arm.mode == "cot" else 1


def _arm_cots(store: Source, arm: ArmConfig, sources: Sequence[Provenance] | None, kind: str,
              split: str, chosen: pa.Table | None = None) -> tuple[pa.Table, int, int]:
    """The CoTs an arm's stage 2 trains on (queries.judged_cot_table's columns), how many did not
    parse, how many its cot_filter left out. Verdicts are counted only for the filter that reads them."""
    cots, excluded = queries.judged_cot_table(store, split, _stage2_cots(arm), sources, arm.n_evals,
                                              verdicts=arm.cot_filter == "teacher_verdict", chosen=chosen)
    kept = _kept(cots, arm.cot_filter, kind)
    kept = cots if kept is None else arrow.where(cots, kept)
    return kept, excluded, cots.num_rows - kept.num_rows


def arm_sets(store: Source, arm: ArmConfig, sources: Sequence[Provenance], kind: str,
             split: str = "train") -> tuple[TrainingSet, TrainingSet | None]:
    """arm_training_set and arm_self_eval_set (None for an arm without self_eval); when both judge
    the same CoTs, those are read once."""
    chosen = _shared_cots(store, arm, sources, split)
    training = arm_training_set(store, arm, sources, kind, split, chosen)
    return training, arm_self_eval_set(store, arm, sources, split, chosen) if arm.self_eval else None


def _shared_cots(store: Source, arm: ArmConfig, sources: Sequence[Provenance] | None, split: str) -> pa.Table | None:
    """The CoTs both of an arm's stages judge, read once; None unless both stages read the same ones."""
    if arm.self_eval and not _gold_labels_only(arm) and _stage2_cots(arm) == arm.n_cots:
        return queries.chosen_cots(store, split, arm.n_cots, sources)
    return None


def _gold_labels_only(arm: ArmConfig) -> bool:
    """Standard fine-tuning: stage 2 trains on gold labels, no CoTs."""
    return arm.mode == "standard" and arm.labels == "gold"


def arm_training_set(store: Source, arm: ArmConfig, sources: Sequence[Provenance], kind: str,
                     split: str = "train", chosen: pa.Table | None = None) -> TrainingSet:
    """The stage-2 rows of an arm: gold labels (standard fine-tuning) or its CoTs (the teacher's
    label of the first CoT for standard distillation), less the CoTs `arm.cot_filter` rejects,
    with `arm.label_noise` of its examples given a wrong label. `chosen`: its CoTs
    (queries.chosen_cots), if already read."""
    if _gold_labels_only(arm):
        training = label_set(store, split)
    else:
        kept, excluded, filtered = _arm_cots(store, arm, sources, kind, split, chosen)
        training = TrainingSet(_cot_rows(kept, arm.labels), excluded, filtered)
    if not arm.label_noise:
        return training
    noisy = add_label_noise(training.rows, arm.label_noise, arm.label_noise_seed, kind)
    return TrainingSet(noisy.rows, training.excluded, training.filtered, tuple(sorted(noisy.noised)))


def arm_self_eval_set(store: Source, arm: ArmConfig, sources: Sequence[Provenance],
                      split: str = "train", chosen: pa.Table | None = None) -> TrainingSet:
    """The stage-1 rows of an arm: every evaluation (the first `arm.n_evals`) of its CoTs."""
    return self_eval_set(store, split, arm.n_cots, sources, arm.n_evals, chosen)


@dataclass(frozen=True)
class ArmRows:
    """What one arm trains on and picks its checkpoints on, read from the store once."""

    training: TrainingSet  # CoT rows (mode cot, standard distillation) or gold label rows
    validation: list  # gold labels: stage 2's checkpoint is picked on them
    self_eval: TrainingSet | None  # stage 1's rows, for arms with self_eval
    judged: list  # validation examples' judged CoTs: stage 1 is picked on verdict agreement with the teacher

    @property
    def self_eval_rows(self) -> list:
        return self.self_eval.rows if self.self_eval else []

    @property
    def excluded(self) -> int:
        return self.training.excluded + (self.self_eval.excluded if self.self_eval else 0)


def read_arm_rows(config: Config, store: Store, arm: ArmConfig) -> ArmRows:
    """An arm's rows, all read on one connection: from one state of the store, with one set of views."""

    def read(con: Source) -> ArmRows:
        sources = provenances(config, con)
        training, self_eval = arm_sets(con, arm, sources, answer_type(config.dataset))
        judged = self_eval_set(con, "validation", arm.n_cots, sources).rows if arm.self_eval else []
        return ArmRows(training, label_set(con, "validation").rows, self_eval, judged)

    return store.read(read)


def read_scored_rows(config: Config, store: Store) -> dict[str, Sequence]:
    """The rows every arm is scored on, read on one connection: the test and validation labels, and
    every judged CoT of the validation examples (which no arm trains on)."""

    def read(con: Source) -> dict[str, Sequence]:
        return {"test": label_set(con, "test").rows, "validation": label_set(con, "validation").rows,
                "judged": self_eval_set(con, "validation", None, provenances(config, con)).rows}

    return store.read(read)


ROWS_FORMAT = 1  # raise it when the same parts give other rows or snapshot ids (these sets, data_snapshot)
_ROWS_TABLES = ("examples", "cots", "evaluations")  # what training and scored rows are read from


@dataclass(frozen=True)
class RowsState:
    """What a set of rows is read from: train.sources, the teacher and prompt versions they resolve
    against, the answer type, the parts of the tables read and, for an arm's rows, the arm. While it
    stays the same, so do the rows; the snapshot ids of rows read in it are remembered (storage.derived)."""

    kind: str  # "arm-rows" or "scored-rows": the storage.derived kind they are kept under
    name: str
    listing: list

    def recall(self, store: Store) -> dict | None:
        """The snapshot ids of rows read in this state before, if kept."""
        return derived.recall(store, self.kind, self.name)

    def remember(self, store: Store, snapshots: dict) -> None:
        """Keep the snapshot ids of rows read in this state, unless a part changed while they were read."""
        if derived.part_listing(store, _ROWS_TABLES) == self.listing:
            derived.remember(store, self.kind, self.name, snapshots)


def rows_state(config: Config, store: Store, arm: ArmConfig | None) -> RowsState:
    """The state rows would be read in now: an arm's (tasks.student.arms.arm_rows), or with arm None
    the rows every arm is scored on (tasks.student.arm_scoring)."""
    kind = answer_type(config.dataset)
    listing = derived.part_listing(store, _ROWS_TABLES)
    name = derived.name_of(ROWS_FORMAT, arm and arm.model_dump(), [source.model_dump() for source in config.train.sources],
                           config.teacher.model, config.teacher.simulate, kind, prompt_version(kind, "cot"),
                           prompt_version(kind, "evaluation"), listing)
    return RowsState("scored-rows" if arm is None else "arm-rows", name, listing)


def arm_sample_keys(store: Source, arm: ArmConfig, sources: Sequence[Provenance] | None, kind: str,
                    split: str = "train") -> tuple[pa.Array, pa.Array]:
    """The stored teacher samples an arm trains on, each key once: the keys of its CoTs (stage 2,
    and those judged in stage 1) and of its self-evaluations (stage 1). Standard fine-tuning uses none."""
    cots, evaluations = [arrow.strings([])], arrow.strings([])
    chosen = _shared_cots(store, arm, sources, split)
    if not _gold_labels_only(arm):
        cots.append(_arm_cots(store, arm, sources, kind, split, chosen)[0].column("cot_key").combine_chunks())
    if arm.self_eval:
        tables = queries.self_eval_tables(store, split, arm.n_cots, sources, arm.n_evals, chosen)
        pairs = arrow.where(tables.pairs, pc.invert(tables.pairs.column("excluded")))
        cots.append(tables.cots.column("cot_key").take(pairs.column("cot")).combine_chunks())
        evaluations = pc.unique(pairs.column("eval_key"))
    return pc.unique(pa.concat_arrays(cots)), evaluations


def canonical_order(rows: Sequence) -> list:
    """The rows sorted by content: training then depends on which rows the store holds, not their order."""
    return sorted(rows, key=lambda r: (r.input, r.label, r.rationale or "", getattr(r, "example_id", "")))


def data_snapshot(rows: Sequence) -> str:
    """A hash of the training rows (input, label, rationale) that names the data a checkpoint saw."""
    if isinstance(rows, TrainingRows) and not any(_nulls(rows.table.column(name)) for name in
                                                  ("example_id", "input", "label")):
        return _table_snapshot(rows.table)
    digest = hashlib.sha256()
    for row in canonical_order(rows):
        task = [row.task] if getattr(row, "task", "answer") != "answer" else []  # answer rows hash as before
        digest.update(json.dumps([row.input, row.label, row.rationale, *task]).encode())
    return digest.hexdigest()[:16]


def data_snapshots(named_rows: dict[str, Sequence]) -> dict[str, str | None]:
    """data_snapshot of each set of rows (None for no rows), two sets at a time: much of the work
    runs in Arrow, NumPy and hashlib without the GIL."""
    with ThreadPoolExecutor(2) as pool:
        ids = pool.map(lambda rows: data_snapshot(rows) if rows else None, named_rows.values())
        return dict(zip(named_rows, ids))


_SNAPSHOT_BATCH = 16_384  # rows whose JSON text is made and hashed at a time


def _nulls(column: pa.ChunkedArray) -> int:
    """Null values of a column, a dictionary-encoded one's null entries included."""
    def nulls(chunk: pa.Array) -> int:
        if pa.types.is_dictionary(chunk.type) and chunk.dictionary.null_count:
            return pc.sum(pc.is_null(chunk.dictionary).take(chunk.indices.fill_null(0))).as_py() + chunk.null_count
        return chunk.null_count

    return sum(map(nulls, column.chunks))


def _table_snapshot(table: pa.Table) -> str:
    """data_snapshot of rows kept as Arrow columns, the same value without a Python object per row:
    each distinct value is ranked and written as JSON once, the rows are put in canonical order by
    those ranks (a stable sort, as `sorted` is), and their JSON lines are joined by Arrow and hashed
    a batch at a time."""
    input_, label, rationale, example_id = (_distinct(table.column(name)) for name in
                                            ("input", "label", "rationale", "example_id"))
    order = np.lexsort([example_id.ranks, rationale.ranks, label.ranks, input_.ranks])  # last key sorts first
    digest, hashed = hashlib.sha256(), None
    with ThreadPoolExecutor(1) as hasher:  # a batch is hashed (without the GIL) while the next is joined
        for start in range(0, len(order), _SNAPSHOT_BATCH):
            rows = order[start:start + _SNAPSHOT_BATCH]
            lines = pc.binary_join_element_wise(
                _OPEN, input_.json(rows), _COMMA, label.json(rows), _COMMA, rationale.json(rows), _CLOSE, _NOTHING)
            _, offsets, data = lines.buffers()
            ends = np.frombuffer(offsets, np.int32)[[lines.offset, lines.offset + len(lines)]]
            if hashed:
                hashed.result()
            hashed = hasher.submit(digest.update, memoryview(data)[ends[0]:ends[1]])
        if hashed:
            hashed.result()
    return digest.hexdigest()[:16]


# A JSON line's punctuation as Arrow scalars (a str argument would be made one by pa.scalar, which imports pandas)
_OPEN, _COMMA, _CLOSE, _NOTHING = arrow.strings(["[", ", ", "]", ""])


@dataclass(frozen=True)
class _Distinct:
    """One column by its distinct values: each row's value number, each value's JSON text and each
    row's rank in sort order (a null sorts as "" and is written null, as `row.rationale or ""` and
    json.dumps(None) have it)."""

    values: np.ndarray  # per row: its value's number; nulls the last number
    texts: pa.Array  # per value number: its JSON text, "null" last
    ranks: np.ndarray  # per row

    def json(self, rows: np.ndarray) -> pa.Array:
        return self.texts.take(arrow.numbers(self.values[rows]))


def _distinct(column: pa.ChunkedArray) -> _Distinct:
    encoded = column.combine_chunks()
    if pa.types.is_dictionary(encoded.type) and encoded.dictionary.null_count:
        encoded = encoded.dictionary_decode()  # null entries: the row's null is in its indices instead
    if not pa.types.is_dictionary(encoded.type):
        encoded = pc.dictionary_encode(encoded)
    strings = encoded.dictionary.to_pylist()
    indices = encoded.indices.cast(pa.int64())
    if indices.null_count:  # not pc.fill_null: its scalar imports pandas
        indices = pc.if_else(pc.is_null(indices), arrow.numbers(np.full(len(indices), len(strings))), indices)
    values = arrow.to_numpy(indices)
    texts = arrow.strings([*map(json.encoder.encode_basestring_ascii, strings), "null"])  # as json.dumps
    ranked = pa.concat_arrays([encoded.dictionary.cast(pa.string()), arrow.strings([""])])
    ranks = pc.rank(ranked, sort_keys="ascending", tiebreaker="dense")
    return _Distinct(values, texts, arrow.to_numpy(ranks)[values])
