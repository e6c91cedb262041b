"""One question answered by a trained student: `mindsmirror predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.config import EvalConfig
from tasks.student import freshness
from tasks.student.arms import NothingToTrain, trained_checkpoints
from tasks.student.checkpoints import RECORD
from tasks.student.decoding import Candidate, choose, judge_candidates, sample_candidates
from tasks.student.devices import limit_cpu_threads
from tasks.student.evaluation import predict
from tasks.student.folders import ArmFolder, is_url
from tasks.student.model import ADAPTER, load_student
from tasks.student.prefixes import EXPLAIN, PREDICT


@dataclass(frozen=True)
class Answer:
    label: str
    rationale: str
    candidates: tuple[Candidate, ...] = ()  # the sampling modes' candidates, with verdicts for self_verify
    chosen: int | None = None  # the candidate that answered


def student_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the checkpoint an arm's folder selected (its trained.json);
    a URL (an arm's folder or a checkpoint in an object store) is read through its local mirror."""
    if is_url(path):
        return _stored_checkpoint(ArmFolder.at(str(path)))
    folder = Path(path)
    if (folder / "config.json").is_file() or (folder / ADAPTER).is_file():
        return folder
    if (folder / freshness.TRAINED).is_file():
        return trained_checkpoints(folder, folder.name)[0]
    raise NothingToTrain(f"{path}: neither a trained arm's folder (no {freshness.TRAINED}) nor a student "
                         "checkpoint (no config.json); give <store folder>/students/<arm> or one of its step folders")


def _stored_checkpoint(folder: ArmFolder) -> Path:
    if folder.exists(RECORD):
        return folder.pull_folder()
    folder.pull_record(freshness.TRAINED)
    if (folder.local / freshness.TRAINED).is_file():
        return folder.pull_checkpoint(trained_checkpoints(folder.local, folder.local.name)[0])
    raise NothingToTrain(f"{folder.url}: neither a trained arm's folder (no {freshness.TRAINED}) nor a complete "
                         f"checkpoint (no {RECORD}); give <store>/students/<arm> or one of its step folders")


def answer_question(model_dir: str, question: str, max_new_tokens: int = 128, *, decode: str = "greedy",
                    samples: int = 5, temperature: float = 1.0, seed: int = 0,
                    answer_type: str = "text") -> Answer:
    """A trained student's answer to one question: greedy (`predict:` label, `explain:` rationale),
    or the candidate a sampling mode chooses (see tasks.student.decoding). `model_dir` is an arm's
    folder (its selected checkpoint answers) or a checkpoint folder."""
    checkpoint = student_checkpoint(model_dir)
    limit_cpu_threads()
    model, tokenizer = load_student(checkpoint)
    if decode == "greedy":
        label, rationale = (
            predict(model, tokenizer, [question], max_new_tokens=max_new_tokens, prefix=prefix, device="cpu")[0]
            for prefix in (PREDICT, EXPLAIN)
        )
        return Answer(label, rationale)
    cfg = EvalConfig(max_new_tokens=max_new_tokens, samples=samples, temperature=temperature, seed=seed)
    candidates = sample_candidates(model, tokenizer, [question], answer_type, cfg, device="cpu")
    if decode == "self_verify":
        candidates = judge_candidates(model, tokenizer, [question], candidates, device="cpu")
    decoded = choose(candidates[0], decode, answer_type)
    return Answer(decoded.answer, decoded.candidates[decoded.chosen].rationale, decoded.candidates, decoded.chosen)
