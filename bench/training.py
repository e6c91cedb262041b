"""Student training speed: our loop against a reference-style Seq2SeqTrainer, same data, same model.

The reference is the pattern of the distilling-step-by-step code: a `Seq2SeqTrainer` subclass whose
`compute_loss` runs two forward passes per step (one on the "predict:" batch, one on the "explain:"
batch, each with the model's own loss) over randomly ordered, dynamically padded batches. Both start
from the same randomly initialised tiny student with the same optimizer settings, learning rate
schedule and gradient clipping; both are scored afterwards with the same loss on held-out rows, so
the speed-up is at equal loss. Also prints the evaluation throughput (batched greedy generation).

    .venv/bin/python bench/training.py                   # SVAMP with PaLM CoTs if ../shared/data exists
    .venv/bin/python bench/training.py --steps 30 --repeats 1

Needs `accelerate` (`pip install -e '.[bench]'`: the Trainer requires it, our loop does not).
Timings on a shared machine are noisy: runs alternate (ours, reference, ours, ...) and the best of
each is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from tasks.config import EvalConfig, StudentConfig, TrainConfig
from tasks.data.arithmetic import generate_problems
from tasks.student.batching import encode
from tasks.student.devices import resolve_device, use_bf16
from tasks.student.evaluation import evaluate_student
from tasks.student.model import build_student
from tasks.student.prefixes import EXPLAIN, PREDICT
from tasks.student.stages import Row
from tasks.student.training import WARMUP, _batch_loss, train_student

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "svamp"


def svamp_rows() -> tuple[list[Row], list[Row], str]:
    def read(split: str, cot_files: list[str]) -> list[Row]:
        examples = [
            json.loads(line) for line in (SHARED / f"svamp_{split}.json").read_text().splitlines() if line
        ]
        cots = [text for name in cot_files for text in json.loads((SHARED / "llm" / name).read_text())]
        # PaLM rambles on into a new few-shot question; the rationale is the part before it.
        return [
            Row(f"svamp-{split}-{i}", ex["input"], ex["label"], cot.split("\n\nQ:")[0].strip())
            for i, (ex, cot) in enumerate(zip(examples, cots))
        ]

    return read("train", ["train_CoT_0.json", "train_CoT_1.json"]), read("test", ["test_CoT_0.json"]), "svamp"


def arithmetic_rows() -> tuple[list[Row], list[Row], str]:
    def rows(split: str, n: int) -> list[Row]:
        return [
            Row(
                p.id,
                p.question,
                p.equation,
                f"We write the problem as {p.equation}. The answer is {p.equation}.",
            )
            for p in generate_problems(n, 0, split)
        ]

    return rows("train", 800), rows("test", 200), "arithmetic (built-in generator)"


class TaskPrefixDataCollator(DataCollatorForSeq2Seq):
    """Splits each feature into its predict and explain halves and pads each half on its own."""

    def __call__(self, features, return_tensors=None):
        pred = [{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features]
        expl = [
            {
                "input_ids": f["expl_input_ids"],
                "attention_mask": f["expl_attention_mask"],
                "labels": f["aux_labels"],
            }
            for f in features
        ]
        return {
            "pred": super().__call__(pred, return_tensors),
            "expl": super().__call__(expl, return_tensors),
        }


class TaskPrefixTrainer(Seq2SeqTrainer):
    """The reference: two forward passes per step, each with the model's own cross-entropy."""

    def __init__(self, alpha: float, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pred_outputs = model(**inputs["pred"])
        expl_outputs = model(**inputs["expl"])
        loss = self.alpha * pred_outputs.loss + (1.0 - self.alpha) * expl_outputs.loss
        return (loss, {"pred": pred_outputs, "expl": expl_outputs}) if return_outputs else loss


def reference_features(rows: list[Row], tokenizer, student: StudentConfig) -> list[dict]:
    def ids(texts, limit):
        return tokenizer(texts, max_length=limit, truncation=True)

    pred = ids([PREDICT + r.input for r in rows], student.max_input_length)
    expl = ids([EXPLAIN + r.input for r in rows], student.max_input_length)
    labels = ids([r.label for r in rows], student.max_target_length)["input_ids"]
    aux = ids([r.rationale for r in rows], student.max_target_length)["input_ids"]
    return [
        {
            "input_ids": pred["input_ids"][i],
            "attention_mask": pred["attention_mask"][i],
            "labels": labels[i],
            "expl_input_ids": expl["input_ids"][i],
            "expl_attention_mask": expl["attention_mask"][i],
            "aux_labels": aux[i],
        }
        for i in range(len(rows))
    ]


def train_reference(model, tokenizer, rows, cfg: TrainConfig, student: StudentConfig, steps: int, out: str):
    device = resolve_device(cfg.device)
    args = Seq2SeqTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=max(1, round(WARMUP * steps)),
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=cfg.seed,
        bf16=use_bf16(cfg.bf16, device),
        use_cpu=device.type == "cpu",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    started = time.perf_counter()
    trainer = TaskPrefixTrainer(
        alpha=cfg.alpha,
        model=model,
        args=args,
        train_dataset=reference_features(rows, tokenizer, student),
        data_collator=TaskPrefixDataCollator(tokenizer=tokenizer, model=model),
        processing_class=tokenizer,
    )
    trainer.train()
    return time.perf_counter() - started


def held_out_loss(model, tokenizer, rows: list[Row], student: StudentConfig, alpha: float) -> float:
    """The multi-task loss on rows the students never trained on, without dropout, in batches of 50."""
    device = next(model.parameters()).device
    data = encode(rows, tokenizer, student, explain=True)
    model.eval()
    with torch.no_grad():
        losses = [
            _batch_loss(
                model, data, list(range(i, min(i + 50, len(rows)))), alpha, tokenizer.pad_token_id, device
            )
            for i in range(0, len(rows), 50)
        ]
    return sum(loss.total.item() for loss in losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    train, test, source = svamp_rows() if (SHARED / "svamp_train.json").is_file() else arithmetic_rows()
    student = StudentConfig(max_input_length=256, max_target_length=256)
    cfg = TrainConfig(
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        stage1_steps=0,
        stage2_steps=options.steps,
        eval_every=options.steps,
    )
    device = resolve_device(cfg.device)

    initial, tokenizer = build_student(student, [t for r in train for t in (r.input, r.label, r.rationale)])
    rows_seen = options.steps * options.batch_size * cfg.grad_accum
    print(f"data: {source}, {len(train)} train rows (predict + explain), {len(test)} held out")
    print(
        f"student: tiny T5 d_model={student.tiny.d_model} layers={student.tiny.num_layers} vocab={len(tokenizer)}"
    )
    print(
        f"device: {device}, torch threads: {torch.get_num_threads()}, {options.steps} steps x {options.batch_size} rows"
    )

    ours, reference = [], []
    for repeat in range(options.repeats):
        with tempfile.TemporaryDirectory() as out:
            model = copy.deepcopy(initial)
            started = time.perf_counter()
            result = train_student(
                train,
                [],
                model=model,
                tokenizer=tokenizer,
                train_cfg=cfg,
                student_cfg=student,
                steps=options.steps,
                out_dir=out,
                accuracy_fn=lambda p, g: 0.0,
                progress=False,
            )
            seconds = time.perf_counter() - started
            held_out = held_out_loss(model, tokenizer, test, student, cfg.alpha)
            ours.append((rows_seen / seconds, held_out, model, result.examples_per_s))
        with tempfile.TemporaryDirectory() as out:
            model = copy.deepcopy(initial)
            seconds = train_reference(model, tokenizer, train, cfg, student, options.steps, out)
            reference.append((rows_seen / seconds, held_out_loss(model, tokenizer, test, student, cfg.alpha)))
        print(
            f"  run {repeat + 1}: ours {ours[-1][0]:.1f} rows/s (held-out loss {ours[-1][1]:.3f}), "
            f"reference {reference[-1][0]:.1f} rows/s (held-out loss {reference[-1][1]:.3f})"
        )

    best_ours, best_reference = max(ours, key=lambda r: r[0]), max(reference, key=lambda r: r[0])
    print(
        f"training, ours:      {best_ours[0]:8.1f} training rows/s, held-out loss {best_ours[1]:.3f} "
        f"({best_ours[3]:.1f} rows/s in the loop alone, without tokenising and the checkpoint)"
    )
    print(
        f"training, reference: {best_reference[0]:8.1f} training rows/s, held-out loss {best_reference[1]:.3f}"
    )
    print(f"speed-up: {best_ours[0] / best_reference[0]:.2f}x (goal >= 1.5x at equal loss)")

    model = best_ours[2].to(device)
    evaluation_cfg = EvalConfig(batch_size=64, max_new_tokens=64)
    scored = evaluate_student(model, tokenizer, test, "equation", evaluation_cfg, device=device)
    print(
        f"evaluation: {scored.examples_per_s:.1f} examples/s (greedy labels, batch 64, up to 64 new tokens)"
    )


if __name__ == "__main__":
    main()
