"""Decoder-only students, built offline: tiny randomly initialised Llama- and Gemma3-shaped causal
models in a local folder, trained by the CLI with and without LoRA, killed and resumed, evaluated in
every decode mode, asked with `predict`, exported and reloaded with transformers alone."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_training_after_a_checkpoint
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from flows.cli import main
from storage import Store, queries
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset
from tasks.student.batching import IGNORE, causal_batch
from tasks.student.model import build_tokenizer, load_student
from tasks.student.prefixes import PREFIXES
from tasks.student.training import multitask_loss

DATASET = {"name": "arithmetic", "arithmetic": {"train": 40, "test": 8, "seed": 0, "max_number": 20}}
STEPS = 6


def _tiny_causal(folder: Path, shape: str) -> Path:
    """A randomly initialised causal student of `shape` with a tokenizer trained on the dataset."""
    rows = load_dataset(DatasetConfig(**DATASET))
    texts = [row.input for row in rows] + [row.label for row in rows]
    tokenizer = build_tokenizer(texts + ["The answer is Evaluation result: the given answer is correct wrong"], 300)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1, max_position_embeddings=256)
    torch.manual_seed(0)
    if shape == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, **ids))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                   sliding_window=16, **ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config_file(tmp_path: Path, model: Path, lora: dict | None, arm: dict) -> Path:
    config = {
        "dataset": DATASET,
        "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": 1, "n_evals": 1,
                    "max_rpm": 100000, "max_tpm": 100000000},
        "generate": {"splits": ["train", "validation"]},
        "store": {"path": str(tmp_path / "store")},
        "student": {"model": str(model), "max_input_length": 64, "max_target_length": 32, "lora": lora},
        "train": {"arms": [arm], "batch_size": 8, "learning_rate": 1e-2, "stage1_steps": 2, "stage2_steps": STEPS,
                  "eval_every": 2, "device": "cpu", "self_eval_replay": 0.2},
        "evaluate": {"batch_size": 16, "max_new_tokens": 8, "samples": 2,
                     "decode": ["self_consistency", "self_verify"]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path



def _reload_with_transformers_alone(folder: Path) -> str:
    """Load an exported folder in a fresh interpreter that imports transformers only, and greedily
    continue a prompt; the printed text comes back."""
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "ids = t('predict: Ann has 3 pens and buys 4 more. How many pens now?', return_tensors='pt'); "
            "out = m.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=t.pad_token_id); "
            "print(type(m).__name__, 'peft' in sys.modules, 'tasks' in sys.modules, len(out[0]))")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_causal_batch_masks_the_prompt_and_the_loss_is_the_hand_computed_mixture():
    prompts, targets = [torch.tensor([5, 6, 7]), torch.tensor([5])], [torch.tensor([8, 1]), torch.tensor([9, 9, 1])]
    input_ids, mask, labels = causal_batch(prompts, targets, [0, 1], pad_id=0, device="cpu")
    assert input_ids.tolist() == [[5, 6, 7, 8, 1], [5, 9, 9, 1, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[IGNORE, IGNORE, IGNORE, 8, 1], [IGNORE, 9, 9, 1, IGNORE]]
    # Label task: 2 target tokens under uniform logits over 4 words: CE = ln 4 each, mean ln 4.
    label_logits, label_targets = torch.zeros(2, 4), torch.tensor([0, 3])
    # Rationale task: 3 tokens; [2, 0, 0, 0] -> word 0 costs ln(e^2 + 3) - 2, uniform ones ln 4.
    rationale_logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    rationale_targets = torch.tensor([0, 1, IGNORE])  # an ignored token counts nowhere
    loss = multitask_loss(label_logits, label_targets, rationale_logits, rationale_targets, alpha=0.25)
    rationale = (math.log(math.e**2 + 3) - 2 + math.log(4)) / 2
    assert loss.label.item() == pytest.approx(math.log(4))
    assert loss.rationale.item() == pytest.approx(rationale)
    assert loss.total.item() == pytest.approx(0.25 * math.log(4) + 0.75 * rationale)


def test_a_llama_shaped_student_with_lora_trains_resumes_decodes_predicts_and_exports(tmp_path, prefect_server,
                                                                                     capsys):
    base = _tiny_causal(tmp_path / "llama", "llama")
    config_file = _config_file(tmp_path, base, {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                               {"name": "cot-1-selfeval", "mode": "cot", "n_cots": 1, "self_eval": True})
    assert main(["generate", str(config_file), "--no-progress"]) == 0
    arm = tmp_path / "store" / "students" / "cot-1-selfeval"

    kill_training_after_a_checkpoint(config_file, arm / "stage2")
    assert not (arm / "trained.json").exists()
    assert main(["train", str(config_file), "--resume"]) == 0
    trained = json.loads((arm / "trained.json").read_text())
    best = arm / trained["checkpoint"]
    record = json.loads((arm / "stage2" / f"step-{STEPS:06d}" / "mindsmirror.json").read_text())
    assert len(record["losses"]) == STEPS  # the resumed run kept the killed run's losses
    # A LoRA checkpoint is the adapter: the base weights stay in the base folder.
    assert (best / "adapter_config.json").is_file() and not (best / "model.safetensors").exists()
    student, tokenizer = load_student(best)
    assert type(student).__name__ == "PeftModelForCausalLM" and tokenizer.padding_side == "left"
    assert all(prefix.strip() in tokenizer.decode(tokenizer(prefix)["input_ids"]) for prefix in PREFIXES)

    assert main(["evaluate", str(config_file)]) == 0
    scores = {(r.split, r.metric): r for r in queries.latest_results(Store(str(tmp_path / "store")))
              if r.arm == "cot-1-selfeval"}
    for metric in ("accuracy", "accuracy:self_consistency", "accuracy:self_verify"):
        assert scores[("test", metric)].n == DATASET["arithmetic"]["test"]
    assert ("validation", "self_eval_agreement") in scores and ("validation", "self_eval_agreement_final") in scores

    capsys.readouterr()
    assert main(["predict", str(arm), "Ann has 3 pens and buys 4 more. How many pens now?",
                 "--decode", "self_verify", "--samples", "2", "--answer-type", "equation"]) == 0
    out = capsys.readouterr().out
    assert out.count("verdict ") == 2 and "answer: " in out

    assert main(["export", str(config_file), "cot-1-selfeval", str(tmp_path / "exported")]) == 0
    assert not (tmp_path / "exported" / "adapter_config.json").exists()  # merged into the weights
    assert _reload_with_transformers_alone(tmp_path / "exported").split()[:3] == ["LlamaForCausalLM", "False", "False"]
    assert main(["export", str(config_file), "cot-1-selfeval", str(tmp_path / "exported")]) == 1  # never overwrites


def test_a_gemma3_shaped_student_trains_every_weight_and_exports(tmp_path, prefect_server):
    base = _tiny_causal(tmp_path / "gemma", "gemma")
    config_file = _config_file(tmp_path, base, None, {"name": "distill", "mode": "standard", "labels": "teacher"})
    assert main(["generate", str(config_file), "--no-progress"]) == 0
    assert main(["train", str(config_file)]) == 0
    arm = tmp_path / "store" / "students" / "distill"
    best = arm / json.loads((arm / "trained.json").read_text())["checkpoint"]
    losses = json.loads((arm / "stage2" / f"step-{STEPS:06d}" / "mindsmirror.json").read_text())["losses"]
    assert losses[-1][1] < losses[0][1]  # the loss fell
    assert (best / "model.safetensors").is_file()
    assert main(["evaluate", str(config_file)]) == 0
    assert main(["export", str(config_file), "distill", str(tmp_path / "exported")]) == 0
    assert _reload_with_transformers_alone(tmp_path / "exported").split()[:3] == ["Gemma3ForCausalLM", "False", "False"]
