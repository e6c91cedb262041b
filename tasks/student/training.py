"""Training the student: the multi-task loss and one explicit training loop (no Trainer subclass).

Each training row is two tasks for the same input (distilling step-by-step): "predict: <input>" ->
label and "explain: <input>" -> rationale, and the loss is alpha * label CE + (1 - alpha) * rationale CE.

Speed (bench/training.py measures it against a Seq2SeqTrainer subclass doing the same two forwards):
rows are tokenised once and batched by length (tasks.student.batching). Packing predict and explain rows into ONE forward was measured slower: the
short label rows then pad to rationale length in the decoder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, T5ForConditionalGeneration

from storage.queries import TrainingRows
from tasks.config import EvalConfig, StudentConfig, TrainConfig
from tasks.data.trainsets import canonical_order, data_snapshot
from tasks.student.batching import IGNORE, Encoded, batches_from, causal_batch, encode, task_batch
from tasks.student.checkpoints import (
    RECORD,
    STATE,
    checkpoint_folders,
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tasks.student.devices import autocast, resolve_device, use_bf16
from tasks.student.evaluation import predict
from tasks.student.model import is_causal, load_student, unwrap
from tasks.student.prefixes import task_of

MAX_GRAD_NORM = 1.0  # the Hugging Face Trainer default, so runs compare with the reference code
WARMUP = 0.05  # share of a stage's steps with a linearly rising learning rate (Adam from scratch needs it)


def learning_rate(base: float, step: int, steps: int) -> float:
    """Linear warmup over the first WARMUP of the steps, then linear decay to 0 at the last step.

    A function of the step alone, so a resumed run follows the same schedule as an uninterrupted one.
    """
    warmup = max(1, round(WARMUP * steps))
    return base * min(1.0, (step + 1) / warmup) * (steps - step) / steps


class Loss(NamedTuple):
    total: torch.Tensor
    label: torch.Tensor
    rationale: torch.Tensor | None


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE (0 when there are none).

    logits: [..., vocab], targets: [...] (a padded batch [rows, length] or selected tokens [tokens]).
    """
    summed = F.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return summed / (targets != IGNORE).sum().clamp(min=1)


def multitask_loss(
    label_logits: torch.Tensor,
    label_targets: torch.Tensor,
    rationale_logits: torch.Tensor | None = None,
    rationale_targets: torch.Tensor | None = None,
    alpha: float = 0.5,
) -> Loss:
    """alpha * label CE + (1 - alpha) * rationale CE, each a mean over its own non-ignored tokens.

    Without rationale targets (standard fine-tuning or distillation) the loss is the label CE alone.
    """
    label = token_ce(label_logits, label_targets)
    if rationale_logits is None or rationale_targets is None or not (rationale_targets != IGNORE).any():
        return Loss(label, label, None)
    rationale = token_ce(rationale_logits, rationale_targets)
    return Loss(alpha * label + (1 - alpha) * rationale, label, rationale)


@dataclass(frozen=True)
class StepLoss:
    step: int
    loss: float
    label_loss: float
    rationale_loss: float | None


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # the best checkpoint on validation accuracy (the latest one without validation rows)
    latest: Path
    steps: int
    best_step: int
    best_accuracy: float | None
    losses: tuple[StepLoss, ...]
    validation: tuple[tuple[int, float], ...]  # (step, accuracy)
    data_snapshot: str
    examples_per_s: float  # training rows per second over the optimizer steps of this call
    seconds: float = 0.0  # wall time of this call: its optimizer steps, validations and checkpoints


def _target_logits(model, inputs, targets, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the real target positions only ([tokens, vocab]) and those targets.

    For T5 the LM head and softmax then skip the padding (the tokenizer-sized matmul is a large
    part of a small student's step); other seq2seq models go through their own forward.
    """
    keep = targets != IGNORE
    mask = inputs != pad_id
    decoder_input_ids = unwrap(model).prepare_decoder_input_ids_from_labels(targets)
    if not isinstance(model, T5ForConditionalGeneration):  # a LoRA-wrapped T5 too: peft runs its forward
        logits = model(input_ids=inputs, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        return logits[keep], targets[keep]
    encoded = model.encoder(input_ids=inputs, attention_mask=mask).last_hidden_state
    hidden = model.decoder(
        input_ids=decoder_input_ids, encoder_hidden_states=encoded, encoder_attention_mask=mask
    ).last_hidden_state[keep]
    if model.config.scale_decoder_outputs:  # as T5ForConditionalGeneration.forward does
        hidden = hidden * model.model_dim**-0.5
    return model.lm_head(hidden), targets[keep]


def causal_logits(model, input_ids, mask, labels, target_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal student's logits at the positions that predict a target token ([tokens, vocab]) and
    those targets. `target_only` runs the output head on those positions alone: the prompt's
    positions would cost a [prompt length, vocabulary] matmul each (262k columns for Gemma 3)."""
    keep = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    if not target_only:
        return model(input_ids=input_ids, attention_mask=mask).logits[:, :-1][keep].float(), labels[:, 1:][keep]
    base = unwrap(model)
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1][keep]
    logits = base.get_output_embeddings()(hidden)
    if cap := getattr(base.config, "final_logit_softcapping", None):  # Gemma's, as its forward applies it
        logits = torch.tanh(logits / cap) * cap
    return logits, labels[:, 1:][keep]


def _task_logits(model, inputs, targets, index, pad_id, device):
    if is_causal(model):
        return causal_logits(model, *causal_batch(inputs, targets, index, pad_id, device))
    return _target_logits(model, *task_batch(inputs, targets, index, pad_id, device), pad_id)


def _batch_loss(model, data: Encoded, index: list[int], alpha: float, pad_id: int, device) -> Loss:
    label_logits, labels = _task_logits(model, data.predict_inputs, data.labels, index, pad_id, device)
    explain = [i for i in index if data.rationales[i] is not None]
    if not explain or alpha == 1:
        return multitask_loss(label_logits, labels)
    rationale = _task_logits(model, data.explain_inputs, data.rationales, explain, pad_id, device)
    return multitask_loss(label_logits, labels, *rationale, alpha)


def _progress(enabled: bool) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
    )
    return Progress(*columns, TimeRemainingColumn(elapsed_when_finished=True), disable=not enabled)


def train_student(
    train: Sequence,
    validation: Sequence,
    *,
    model,
    tokenizer,
    train_cfg: TrainConfig,
    student_cfg: StudentConfig,
    steps: int,
    out_dir: str | Path,
    accuracy_fn: Callable[[list[str], list[str]], float],
    eval_cfg: EvalConfig | None = None,
    provenance: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[StepLoss], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train `model` for `steps` optimizer steps on `train` rows (anything with input/label/rationale).

    Every eval_every steps (and at the end) the student predicts the labels of `validation` rows,
    `accuracy_fn(predictions, golds)` scores them, and a checkpoint is written to out_dir/step-NNNNNN;
    the best one on validation accuracy is kept. `resume=True` continues from the latest checkpoint in
    out_dir, giving the same losses an uninterrupted run would have; a finished run is not repeated.
    `on_checkpoint(path)` is called after each checkpoint is saved (and older ones pruned).
    """
    called = time.perf_counter()
    out_dir, eval_cfg = Path(out_dir), eval_cfg or EvalConfig()
    rows = canonical_order(train)
    # Rows read from the store hash from their columns (0.8 s for 900,000, not 2.7 s as objects).
    snapshot = data_snapshot(train if isinstance(train, TrainingRows) else rows)
    config = {"student": student_cfg.model_dump(), "train": train_cfg.model_dump(), "steps": steps}
    record = {"format": 1, **(provenance or {}), **config, "data_snapshot": snapshot, "rows": len(rows)}
    latest = latest_checkpoint(out_dir) if resume else None
    if latest is not None:
        state, model, tokenizer = _restore(latest, record)
    else:
        state = {"step": 0, "losses": [], "validation": [], "best_step": 0, "best_accuracy": None}
        _clear(out_dir)
    if state["step"] >= steps:
        return _result(out_dir, state, record["data_snapshot"], steps, 0.0)

    torch.manual_seed(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    bf16 = use_bf16(train_cfg.bf16, device)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA, the adapters only
    optimizer = torch.optim.AdamW(trainable, lr=train_cfg.learning_rate, weight_decay=0.0)
    if latest is not None:
        _restore_optimizer(latest, optimizer)
    data = encode(rows, tokenizer, student_cfg, explain=train_cfg.alpha < 1)
    batches = batches_from(data.lengths, train_cfg.batch_size, train_cfg.seed, skip=state["step"] * train_cfg.grad_accum)
    trained_rows, train_seconds = 0, 0.0
    with _progress(progress) as bar:
        task = bar.add_task(f"{out_dir.parent.name} {out_dir.name}", total=steps, completed=state["step"], status="")
        while state["step"] < steps:
            started = time.perf_counter()
            step_loss, seen = _optimizer_step(model, optimizer, data, batches, train_cfg, state["step"], steps,
                                              device, bf16, tokenizer.pad_token_id)
            state["step"] = step_loss.step
            trained_rows, train_seconds = trained_rows + seen, train_seconds + time.perf_counter() - started
            state["losses"].append(list(dataclasses.astuple(step_loss)))
            speed = trained_rows / train_seconds
            bar.update(task, advance=1, status=f"loss {step_loss.loss:.3f}  {speed:.0f} rows/s")
            if state["step"] % train_cfg.eval_every == 0 or state["step"] == steps:
                _validate(model, tokenizer, validation, accuracy_fn, eval_cfg, student_cfg, device, bf16, state)
                saved = _save(model, tokenizer, optimizer, out_dir, state, {**record, **state, "examples_per_s": speed})
                if on_checkpoint is not None:
                    on_checkpoint(saved)
            if on_step is not None:
                on_step(step_loss)
    return _result(out_dir, state, record["data_snapshot"], steps, trained_rows / train_seconds if train_seconds else 0.0,
                   time.perf_counter() - called)


def _restore(latest: Path, record: dict) -> tuple[dict, PreTrainedModel, PreTrainedTokenizerBase]:
    """The loop state and student saved in `latest`, once its record shows it trained the same run."""
    stored = json.loads((latest / RECORD).read_text())
    for key in ("data_snapshot", "student", "train", "steps"):
        if stored[key] != record[key]:
            raise ValueError(
                f"{latest.parent}: cannot resume, its checkpoints were made with a different {key} "
                f"({stored[key]} != {record[key]}); use another output folder or resume=False"
            )
    state = {key: stored[key] for key in ("step", "losses", "validation", "best_step", "best_accuracy")}
    return state, *load_student(latest)


def _restore_optimizer(latest: Path, optimizer) -> None:
    saved = torch.load(latest / STATE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])


def _clear(out_dir: Path) -> None:
    """A fresh run does not mix with the checkpoints of an earlier one in the same folder."""
    for path in checkpoint_folders(out_dir):
        shutil.rmtree(path)


def _optimizer_step(model, optimizer, data: Encoded, batches, cfg: TrainConfig, step: int, steps: int,
                    device, bf16: bool, pad_id: int) -> tuple[StepLoss, int]:
    """One optimizer step over cfg.grad_accum batches: its loss, and the rows it trained on."""
    optimizer.zero_grad(set_to_none=True)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg.learning_rate, step, steps)
    parts, rows = [], 0
    for _ in range(cfg.grad_accum):
        index = next(batches)
        with autocast(device, bf16):
            loss = _batch_loss(model, data, index, cfg.alpha, pad_id, device)
        (loss.total / cfg.grad_accum).backward()
        parts.append(loss)
        rows += len(index)
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    return _mean_parts(step + 1, parts), rows


def _save(model, tokenizer, optimizer, out_dir: Path, state: dict, record: dict) -> Path:
    """A checkpoint of this step; only it and the best one so far are kept."""
    path = out_dir / f"step-{state['step']:06d}"
    save_checkpoint(model, tokenizer, optimizer, path, record)
    prune_checkpoints(out_dir, {path, out_dir / f"step-{state['best_step']:06d}"})
    return path


def _mean_parts(step: int, parts: list[Loss]) -> StepLoss:
    rationale = [p.rationale.item() for p in parts if p.rationale is not None]
    return StepLoss(
        step=step,
        loss=sum(p.total.item() for p in parts) / len(parts),
        label_loss=sum(p.label.item() for p in parts) / len(parts),
        rationale_loss=sum(rationale) / len(rationale) if rationale else None,
    )


def _validate(model, tokenizer, validation, accuracy_fn, eval_cfg, student_cfg, device, bf16, state) -> None:
    """Score the validation rows (one task: answers, or verdicts in stage 1) and move the best step;
    without validation rows the latest is best."""
    if not validation:
        state["best_step"] = state["step"]
        return
    preds = predict(
        model,
        tokenizer,
        [row.input for row in validation],
        eval_cfg.batch_size,
        eval_cfg.max_new_tokens,
        device,
        prefix=task_of(validation[0]).label,
        max_input_length=student_cfg.max_input_length,
        bf16=bf16,
    )
    accuracy = accuracy_fn(preds, [row.label for row in validation])
    state["validation"].append([state["step"], accuracy])
    if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
        state["best_step"], state["best_accuracy"] = state["step"], accuracy


def _result(out_dir: Path, state: dict, snapshot: str, steps: int, speed: float, seconds: float = 0.0) -> TrainResult:
    return TrainResult(
        checkpoint=out_dir / f"step-{state['best_step']:06d}",
        latest=out_dir / f"step-{state['step']:06d}",
        steps=steps,
        best_step=state["best_step"],
        best_accuracy=state["best_accuracy"],
        losses=tuple(StepLoss(*item) for item in state["losses"]),
        validation=tuple((int(s), float(a)) for s, a in state["validation"]),
        data_snapshot=snapshot,
        examples_per_s=speed,
        seconds=seconds,
    )
