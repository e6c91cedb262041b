"""Scoring a student: batched greedy generation of labels and rationales, accuracy, agreement.

Labels are generated with the "predict: " prefix, rationales with "explain: " (the prefixes the
student was trained with, tasks.student.prefixes). Accuracy uses
tasks.teacher.parsing.answers_match, so an equation label is scored by its numeric value.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.progress import Progress

from tasks.answers import answers_match
from tasks.config import EvalConfig
from tasks.student.devices import autocast
from tasks.student.model import is_causal
from tasks.student.prefixes import EXPLAIN, JUDGE, PREDICT

VERDICTS = ("correct", "wrong", "uncertain")


def predict(
    model,
    tokenizer,
    inputs: Sequence[str],
    batch_size: int = 64,
    max_new_tokens: int = 64,
    device: torch.device | str | None = None,
    *,
    prefix: str = PREDICT,
    max_input_length: int = 512,
    bf16: bool = False,
    progress: bool = False,
) -> list[str]:
    """Greedy outputs for `inputs` (each prefixed with `prefix`), in the order of `inputs`.

    Inputs are batched by length, so a batch pads to a similar length instead of the longest input.
    """
    options = dict(max_input_length=max_input_length, bf16=bf16, progress=progress)
    outputs = generate(model, tokenizer, inputs, batch_size, max_new_tokens, device, prefix=prefix, **options)
    return [texts[0] for texts in outputs]


def generate(
    model,
    tokenizer,
    inputs: Sequence[str],
    batch_size: int = 64,
    max_new_tokens: int = 64,
    device: torch.device | str | None = None,
    *,
    prefix: str = PREDICT,
    samples: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    max_input_length: int = 512,
    bf16: bool = False,
    progress: bool = False,
) -> list[list[str]]:
    """Outputs for `inputs` in their order: one greedy output each, or `samples` sampled ones.

    Sampling is seeded per batch from `seed` and the batch's position, inside a forked RNG, so the
    same call gives the same samples and leaves the caller's random state alone.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    per_input = samples or 1
    # A batch holds batch_size sequences being decoded, whatever the number of samples per input.
    step = max(1, batch_size // per_input)
    outputs: list[list[str]] = [[] for _ in inputs]
    causal = is_causal(model)
    was_training = model.training
    model.eval()
    with Progress(disable=not progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(f"generating {prefix.strip()}", total=len(inputs))
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            encoded = tokenizer(
                [prefix + inputs[i] for i in chunk],
                max_length=max_input_length,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(device)
            sampling = {"do_sample": False} if samples is None else {
                "do_sample": True, "temperature": temperature, "top_k": 0, "num_return_sequences": samples,
            }
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), autocast(device, bf16):
                torch.manual_seed(seed * 1_000_003 + start)
                generated = model.generate(
                    input_ids=encoded["input_ids"],
                    attention_mask=encoded["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling,
                )
            if causal:  # a causal student's output goes on after its (left-padded) prompt
                generated = generated[:, encoded["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            for n, i in enumerate(chunk):
                outputs[i] = [text.strip() for text in texts[n * per_input : (n + 1) * per_input]]
            bar.advance(task, len(chunk))
    model.train(was_training)
    return outputs


def label_accuracy(preds: Sequence[str], golds: Sequence[str], answer_type: str) -> float:
    """Share of predictions that match their gold label (0.0 for no predictions)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not preds:
        return 0.0
    return sum(answers_match(answer_type, p, g) for p, g in zip(preds, golds)) / len(preds)


def is_verdict(text: str) -> bool:
    """Whether an answer is only a verdict word ("correct", "Wrong.", "answer: uncertain")."""
    return text.strip().lower().split(":")[-1].strip(" .,;!") in VERDICTS


def normalise_verdict(text: str) -> str | None:
    """The verdict word a student's self-evaluation output starts with, or None."""
    words = text.strip().lower().split()
    word = words[0].strip(".,:;!") if words else ""
    return word if word in VERDICTS else None


def verdict_accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Self-evaluation agreement: share of judged inputs where the student's verdict is the teacher's."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} verdicts for {len(golds)} teacher verdicts")
    if not preds:
        return 0.0
    return sum(normalise_verdict(p) == normalise_verdict(g) for p, g in zip(preds, golds)) / len(preds)


@dataclass(frozen=True)
class Evaluation:
    """A student's outputs on one split, in the order of the rows given, and their scores."""

    predictions: tuple[str, ...]
    rationales: tuple[str, ...] | None  # explain outputs, when asked for
    correct: tuple[bool, ...]
    accuracy: float
    n: int
    examples_per_s: float  # label generation only


def evaluate_student(
    model,
    tokenizer,
    rows: Sequence,
    answer_type: str,
    cfg: EvalConfig | None = None,
    *,
    device: torch.device | str | None = None,
    explain: bool = False,
    max_input_length: int = 512,
    bf16: bool = False,
    progress: bool = False,
) -> Evaluation:
    """Label accuracy of the student on `rows` (anything with .input and .label); rationales if `explain`.

    For self-evaluation rows (input from tasks.teacher.prompts.format_judged_input, label a verdict) use
    answer_type "verdict": the student is asked to judge, and accuracy is the agreement with the
    teacher's verdicts.
    """
    cfg = cfg or EvalConfig()
    inputs = [row.input for row in rows]
    golds = [row.label for row in rows]
    options = {
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "device": device,
        "max_input_length": max_input_length,
        "bf16": bf16,
        "progress": progress,
    }
    started = time.perf_counter()
    preds = predict(model, tokenizer, inputs, prefix=JUDGE if answer_type == "verdict" else PREDICT, **options)
    seconds = time.perf_counter() - started
    if answer_type == "verdict":
        correct = [normalise_verdict(p) == normalise_verdict(g) for p, g in zip(preds, golds)]
    else:
        correct = [answers_match(answer_type, p, g) for p, g in zip(preds, golds)]
    rationales = predict(model, tokenizer, inputs, prefix=EXPLAIN, **options) if explain else None
    return Evaluation(
        predictions=tuple(preds),
        rationales=tuple(rationales) if rationales is not None else None,
        correct=tuple(correct),
        accuracy=sum(correct) / len(correct) if correct else 0.0,
        n=len(rows),
        examples_per_s=len(rows) / seconds if seconds > 0 else 0.0,
    )
