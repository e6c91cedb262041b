"""How long the paper-scale SVAMP recipe (examples/paper/svamp.yaml) takes on this machine's GPU,
measured without any download: a prepared check for a machine with a GPU and no network.

For each student shape, t5-v1_1-base (12+12 layers, d_model 768, d_ff 2048 gated-GELU, 32128-token
vocabulary, untied head) and SmolLM2-135M (30 layers, hidden 576, 9 heads / 3 KV heads, 49152-token
vocabulary, tied head), a randomly initialised model is built from its config alone, with a BPE
tokenizer trained on the synthetic rows (so token counts are those of that tokenizer, printed beside
the numbers). Each kind of stage the recipe's arms run, stage 1 on self-evaluations and stage 2 on
labels only (standard arms) or on labels and rationales (CoT arms), is trained for --steps optimizer
steps through the project's own loop (tasks.student.training.train_student) at the recipe's batch
size, learning rate, alpha and length limits, with bf16 autocast, then validated once on the
recipe's 80 validation rows and checkpointed, as the recipe does every eval_every steps. It prints
rows/s, peak GPU memory, and the extrapolated wall time of every arm of the recipe and of the whole
run: steps x the measured step time + validations x the measured validation-and-checkpoint time.
Test-set scoring and the teacher are not included.

    python bench/gpu_check.py                      # on the GPU, bf16, 20 steps per stage
    python bench/gpu_check.py --cpu --steps 2 --validation-rows 4   # smoke check anywhere (fp32)

Not run on a GPU yet: the numbers it prints have not been measured by this project on one.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.real_student import svamp_like_rows  # noqa: E402
from tasks.config import Config, load_config  # noqa: E402
from tasks.student.devices import limit_cpu_threads  # noqa: E402
from tasks.student.evaluation import label_accuracy, verdict_accuracy  # noqa: E402
from tasks.student.model import build_student, build_tokenizer  # noqa: E402
from tasks.student.stages import Row, judging  # noqa: E402
from tasks.student.training import train_student  # noqa: E402

RECIPE = REPO / "examples" / "paper" / "svamp.yaml"
TOKENIZER_VOCAB = 2000  # the synthetic rows' tokenizer; the model's vocabulary has the real size


def t5_v1_1_base(folder: Path, tokenizer) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                      num_heads=12, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", dropout_rate=0.1, tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return _save(T5ForConditionalGeneration(config), tokenizer, folder)


def smollm2_135m(folder: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return _save(LlamaForCausalLM(config), tokenizer, folder)


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_rows(n: int) -> dict[str, list[Row]]:
    """SVAMP-shaped rows for each kind of stage: labels only, labels and rationales, self-evaluations."""
    cot = svamp_like_rows(n)
    return {
        "standard": [Row(row.example_id, row.input, row.label, None) for row in cot],
        "cot": cot,
        "self_eval": judging([Row(row.example_id, f"{row.input} Proposed answer: {row.rationale}", "correct",
                                  "Evaluation result: the given answer is correct. The steps add up and the "
                                  "final equation matches the question.") for row in cot]),
    }


def measure_stage(kind: str, rows: list[Row], validation: list[Row], model, tokenizer, config: Config,
                  steps: int, out_dir: Path) -> dict[str, float]:
    """Seconds per optimizer step and per validation-and-checkpoint of one stage kind."""
    train_cfg = config.train.model_copy(update={"eval_every": steps})
    accuracy = verdict_accuracy if kind == "self_eval" else (
        lambda predictions, golds: label_accuracy(predictions, golds, "equation"))
    marks: list[float] = []
    started = time.perf_counter()
    result = train_student(rows, validation, model=model, tokenizer=tokenizer, train_cfg=train_cfg,
                           student_cfg=config.student, steps=steps, out_dir=out_dir / kind, accuracy_fn=accuracy,
                           eval_cfg=config.evaluate, progress=False, on_step=lambda _: marks.append(time.perf_counter()))
    wall = time.perf_counter() - started
    rows_per_step = train_cfg.batch_size * train_cfg.grad_accum
    train_seconds = steps * rows_per_step / result.examples_per_s
    # Steady state: the steps between the first (warm-up) and the last (which also validates).
    steady = [later - earlier for earlier, later in zip(marks, marks[1:])][:-1]
    step_s = statistics.median(steady) if len(steady) >= 2 else train_seconds / steps
    return {"step_s": step_s, "rows_per_s": rows_per_step / step_s, "validate_s": max(wall - train_seconds, 0.0)}


def extrapolate(config: Config, stages: dict[str, dict[str, float]]) -> dict[str, float]:
    """Seconds of each arm of the recipe at its full step counts."""
    train = config.train
    checks = math.ceil(train.stage1_steps / train.eval_every), math.ceil(train.stage2_steps / train.eval_every)
    arms = {}
    for arm in train.arms:
        stage2 = stages["cot" if arm.mode == "cot" else "standard"]
        seconds = train.stage2_steps * stage2["step_s"] + checks[1] * stage2["validate_s"]
        if arm.self_eval:
            seconds += train.stage1_steps * stages["self_eval"]["step_s"] + checks[0] * stages["self_eval"]["validate_s"]
        arms[arm.name] = seconds
    return arms


def check_shape(name: str, build, config: Config, rows: dict[str, list[Row]], validation: list[Row],
                tokenizer, steps: int, device: str, folder: Path) -> None:
    config = config.model_copy(update={"student": config.student.model_copy(
        update={"model": str(build(folder / name, tokenizer))})})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stages, parameters = {}, 0
    for kind, stage_rows in rows.items():
        model, student_tokenizer = build_student(config.student, [], seed=config.train.seed)
        parameters = sum(p.numel() for p in model.parameters())
        stages[kind] = measure_stage(kind, stage_rows, validation, model, student_tokenizer, config, steps,
                                     folder / f"{name}-runs")
        del model
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "n/a (CPU)"
    print(f"\n{name}: {parameters / 1e6:.0f}M parameters, peak GPU memory {peak}")
    for kind, stage in stages.items():
        print(f"  {kind:9s} {stage['rows_per_s']:8.1f} rows/s  {stage['step_s']:.3f} s/step  "
              f"{stage['validate_s']:.1f} s per validation + checkpoint")
    arms = extrapolate(config, stages)
    for arm, seconds in arms.items():
        print(f"  {arm:18s} {seconds / 3600:6.2f} h")
    print(f"  whole SVAMP recipe ({len(arms)} arms, training and validation): {sum(arms.values()) / 3600:.2f} h")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (smoke check)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per stage kind")
    parser.add_argument("--validation-rows", type=int, default=80,
                        help="rows validated per stage (the recipe's 80; fewer for a quicker smoke check)")
    parser.add_argument("--shapes", nargs="+", default=["t5-v1_1-base", "smollm2-135m"],
                        choices=["t5-v1_1-base", "smollm2-135m"])
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device here; pass --cpu for the fp32 smoke check", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda"
    if args.cpu:
        limit_cpu_threads()
    config = load_config(RECIPE)
    config = config.model_copy(update={"train": config.train.model_copy(
        update={"device": device, "bf16": not args.cpu})})
    train = config.train
    rows = synthetic_rows(720)
    validation = svamp_like_rows(args.validation_rows)
    tokenizer = build_tokenizer([text for row in rows["self_eval"] for text in (row.input, row.label, row.rationale)]
                                + [row.label for row in rows["cot"]], TOKENIZER_VOCAB)
    lengths = {kind: statistics.fmean(len(tokenizer(row.input).input_ids) for row in stage_rows[:50])
               for kind, stage_rows in rows.items()}
    print(f"{RECIPE.relative_to(REPO)} on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}: "
          f"{'bf16' if train.bf16 else 'fp32'}, batch {train.batch_size}, {args.steps} steps per stage kind, "
          f"recipe {train.stage1_steps} + {train.stage2_steps} steps, validation every {train.eval_every}; "
          f"mean input tokens {', '.join(f'{kind} {value:.0f}' for kind, value in lengths.items())}")
    builders = {"t5-v1_1-base": t5_v1_1_base, "smollm2-135m": smollm2_135m}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.shapes:
            check_shape(name, builders[name], config, rows, validation, tokenizer, args.steps, device, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
