"""A real pretrained student on this machine: training speed, and the SVAMP benchmark.

speed: rows/s of optimizer steps of a real student (default SmolLM2-135M, the smollm2-135m preset)
on SVAMP-shaped rows, every weight trained vs LoRA, logits over every position vs only the target
positions (tasks.student.training.causal_logits), as ratios against full training with all-position
logits, all measured in the same process:

    python bench/real_student.py speed [--model smollm2-135m] [--steps 3] [--batch 8]

svamp: the pretrained student trained on SVAMP with the recorded PaLM-540B rationales of the
Distilling-Step-by-Step folder (`mindsmirror import dss`), three arms with the same steps and seed:
standard fine-tuning on gold labels, standard distillation on PaLM's labels, and one PaLM CoT per
example (distilling step-by-step); each picks its checkpoint on validation and is scored on the 200
test problems, beside the untrained model's greedy accuracy. Settings chosen to fit about an hour
on 2 CPU cores: LoRA r=8 on every linear layer, batch 8, 150 steps per arm, inputs cut at 160 and
targets at 96 tokens, validation every 50 steps on the 80 validation problems.

    python bench/real_student.py svamp --data ../shared/data/svamp --out runs/real-student [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.config import EvalConfig, LoraSettings, StudentConfig  # noqa: E402
from tasks.student.batching import causal_batch, encode  # noqa: E402
from tasks.student.devices import limit_cpu_threads  # noqa: E402
from tasks.student.model import load_student, with_lora  # noqa: E402
from tasks.student.pretrained import resolve_model  # noqa: E402
from tasks.student.stages import Row  # noqa: E402
from tasks.student.training import causal_logits, multitask_loss  # noqa: E402


def svamp_like_rows(n: int) -> list[Row]:
    """SVAMP-shaped rows (a two-sentence problem, an equation label, a one-line rationale)."""
    return [Row(f"r{i}", f"Jack had {i + 7} marbles. He gave {i + 2} marbles to his friend and then found "
                f"{i % 5 + 3} more on the way home. How many marbles does Jack have now?",
                f"( ( {i + 7}.0 - {i + 2}.0 ) + {i % 5 + 3}.0 )",
                f"Jack had {i + 7} marbles and gave away {i + 2}, so he had {5}. Then he found {i % 5 + 3} more, "
                f"so he has {5 + i % 5 + 3}. The answer is {5 + i % 5 + 3}.") for i in range(n)]


def rows_per_s(model, tokenizer, rows, batch: int, steps: int, target_only: bool) -> float:
    """Rows per second over `steps` optimizer steps (after one warm-up step) of the two-task loss."""
    data = encode(rows, tokenizer, StudentConfig(max_input_length=128, max_target_length=128), explain=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    pad = tokenizer.pad_token_id
    model.train()
    batches = itertools.cycle([list(range(i, i + batch)) for i in range(0, len(rows) - batch + 1, batch)])
    seconds = 0.0
    for step in range(steps + 1):
        index = next(batches)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        label = causal_logits(model, *causal_batch(data.predict_inputs, data.labels, index, pad, "cpu"), target_only)
        rationale = causal_logits(model, *causal_batch(data.explain_inputs, data.rationales, index, pad, "cpu"),
                                  target_only)
        multitask_loss(*label, *rationale, alpha=0.5).total.backward()
        optimizer.step()
        seconds += (time.perf_counter() - started) if step else 0.0
    return steps * batch / seconds


def speed(args) -> None:
    limit_cpu_threads()
    folder = resolve_model(args.model)
    rows = svamp_like_rows(args.batch * 4)
    results = {}
    for lora in (False, True):
        model, tokenizer = load_student(folder)
        if lora:
            model = with_lora(model, LoraSettings(r=8))
        for target_only in (False, True):
            results[(lora, target_only)] = rows_per_s(model, tokenizer, rows, args.batch, args.steps, target_only)
    base = results[(False, False)]
    print(f"{args.model}: {args.steps} steps of {args.batch} rows each (predict + explain), "
          f"{torch.get_num_threads()} threads")
    print("| training | logits | rows/s | vs full, all positions |\n|---|---|---|---|")
    for (lora, target_only), value in results.items():
        print(f"| {'LoRA r=8' if lora else 'every weight'} | {'targets only' if target_only else 'all positions'} "
              f"| {value:.2f} | {value / base:.2f}x |")


ARMS = [{"name": "standard-finetune", "mode": "standard", "labels": "gold"},
        {"name": "standard-distill", "mode": "standard", "labels": "teacher"},
        {"name": "cot-1", "mode": "cot", "n_cots": 1}]


def svamp_config(data: Path, out: Path, model: str, seed: int, steps: int) -> dict:
    return {
        "dataset": {"name": "svamp", "path": str(data)},
        "store": {"path": str(out / f"store-seed{seed}")},
        "student": {"model": model, "max_input_length": 160, "max_target_length": 96, "lora": {"r": 8, "alpha": 16}},
        "train": {"arms": ARMS, "alpha": 0.5, "batch_size": 8, "learning_rate": 2e-4, "stage1_steps": 0,
                  "stage2_steps": steps, "eval_every": 50, "seed": seed, "device": "cpu",
                  "sources": [{"source": "dss"}]},
        "evaluate": {"batch_size": 32, "max_new_tokens": 48},
    }


def untrained_accuracy(config_file: Path) -> float:
    """The pretrained model's greedy test accuracy, asked the same `predict:` prompts as the arms."""
    from storage import Store
    from tasks.config import load_config
    from tasks.data.trainsets import label_set
    from tasks.student.evaluation import evaluate_student

    config = load_config(str(config_file))
    model, tokenizer = load_student(resolve_model(config.student.model))
    test = label_set(Store(config.store.path), "test").rows
    scored = evaluate_student(model, tokenizer, test, "equation", EvalConfig(batch_size=32, max_new_tokens=48),
                              max_input_length=config.student.max_input_length)
    return scored.accuracy


def svamp(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    config_file = args.out / f"svamp-seed{args.seed}.yaml"
    config_file.write_text(yaml.safe_dump(svamp_config(args.data.resolve(), args.out.resolve(), args.model,
                                                       args.seed, args.steps)))
    cli = [sys.executable, "-m", "flows.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (["import", "dss", str(config_file)], ["train", str(config_file)], ["evaluate", str(config_file)]):
        subprocess.run(cli + command, cwd=REPO, env=env, check=True)
    print(json.dumps({"untrained": untrained_accuracy(config_file)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("speed")
    sub.add_argument("--model", default="smollm2-135m")
    sub.add_argument("--steps", type=int, default=3)
    sub.add_argument("--batch", type=int, default=8)
    sub.set_defaults(handler=speed)
    sub = commands.add_parser("svamp")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("--out", type=Path, default=Path("runs/real-student"))
    sub.add_argument("--model", default="smollm2-135m")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--steps", type=int, default=150)
    sub.set_defaults(handler=svamp)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
