"""A student shaped like google/t5-v1_1-base, built offline: the CLI trains, resumes, evaluates and
predicts with `student.model: <its folder>` exactly as with the real model.

The fixture folder has what the hub's t5-v1_1 folders have: untied input and output embeddings
(`tie_word_embeddings: false` in config.json, no output scaling), gated-GELU feed-forward layers,
relative attention buckets, a SentencePiece-style Unigram tokenizer with T5's specials (pad 0, eos
1, unk 2, <extra_id_N> sentinels) and a model vocabulary padded past the tokenizer's (32,128 rows
for 32,100 tokens in the real one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_training_after_a_checkpoint
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from flows.cli import main
from storage import Store, queries
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset
from tasks.student.model import load_student

DATASET = {"name": "arithmetic", "arithmetic": {"train": 60, "test": 12, "seed": 0, "max_number": 20}}
SPECIALS = ["<pad>", "</s>", "<unk>"]
SENTINELS = [f"<extra_id_{i}>" for i in range(3)]
MAX_INPUT = 24  # tokens: shorter than most questions, so every stage truncates
STEPS = 30


def _unigram_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = sorted({char for text in texts for char in text if not char.isspace()})
    tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=400, special_tokens=SPECIALS, unk_token="<unk>", initial_alphabet=alphabet, show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=SENTINELS, model_max_length=512)


@pytest.fixture(scope="module")
def t5_v1_1_folder(tmp_path_factory) -> Path:
    rows = load_dataset(DatasetConfig(**DATASET))
    texts = [row.input for row in rows] + [row.label for row in rows]
    texts += ["predict: explain: The answer is Evaluation result: the given answer is correct wrong uncertain"]
    tokenizer = _unigram_tokenizer(texts)
    config = T5Config(
        vocab_size=-(-len(tokenizer) // 128) * 128,  # padded to a multiple of 128, as t5-v1_1's 32128
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.1,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():  # the LM head of a v1.1 checkpoint is its own matrix, not the input embedding
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    folder = tmp_path_factory.mktemp("t5-v1_1-tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # config.json as the hub's t5-v1_1 folders have it (written before output scaling had its own key)
    saved = json.loads((folder / "config.json").read_text())
    saved.pop("scale_decoder_outputs", None)
    (folder / "config.json").write_text(json.dumps({**saved, "tie_word_embeddings": False}, indent=2))
    return folder


def test_the_fixture_has_the_shape_of_t5_v1_1_and_loads_untied_without_a_warning(t5_v1_1_folder, capfd):
    config = AutoConfig.from_pretrained(t5_v1_1_folder)
    capfd.readouterr()
    model, tokenizer = load_student(t5_v1_1_folder)
    assert "tie_word_embeddings" not in capfd.readouterr().err  # transformers 5 warns on every v1.1 load
    assert config.is_gated_act and config.dense_act_fn == "gelu_new" and not config.scale_decoder_outputs
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert model.config.vocab_size > len(tokenizer)
    assert tokenizer.decode(tokenizer("predict: 7 + 5")["input_ids"], skip_special_tokens=True) == "predict: 7 + 5"


def _config_file(tmp_path: Path, model_folder: Path) -> Path:
    config = {
        "dataset": DATASET,
        "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": 1, "n_evals": 1,
                    "max_rpm": 100000, "max_tpm": 100000000},
        "generate": {"splits": ["train", "validation"]},
        "store": {"path": str(tmp_path / "store")},
        "student": {"model": str(model_folder), "max_input_length": MAX_INPUT, "max_target_length": 32},
        "train": {"arms": [{"name": "cot-1", "mode": "cot", "n_cots": 1}], "batch_size": 8,
                  "learning_rate": 1e-3, "stage1_steps": 0, "stage2_steps": STEPS, "eval_every": 2,
                  "device": "cpu", "bf16": True},
        "evaluate": {"batch_size": 16, "max_new_tokens": 12},
    }
    path = tmp_path / "v1_1.yaml"
    path.write_text(yaml.safe_dump(config))
    return path



def test_train_resume_evaluate_predict_with_a_t5_v1_1_shaped_folder(tmp_path, t5_v1_1_folder, prefect_server,
                                                                    capsys):
    config_file = _config_file(tmp_path, t5_v1_1_folder)
    assert main(["generate", str(config_file), "--no-progress"]) == 0
    arm = tmp_path / "store" / "students" / "cot-1"
    _, tokenizer = load_student(t5_v1_1_folder)
    questions = [row.input for row in queries.label_rows(Store(str(tmp_path / "store")), "train")]
    assert max(len(tokenizer("predict: " + q)["input_ids"]) for q in questions) > MAX_INPUT  # truncation is real

    kill_training_after_a_checkpoint(config_file, arm / "stage2")
    killed_at = max(int(p.name.split("-")[1]) for p in (arm / "stage2").glob("step-*") if (p / "mindsmirror.json").exists())
    assert killed_at < STEPS and not (arm / "trained.json").exists()

    assert main(["train", str(config_file), "--resume"]) == 0
    trained = json.loads((arm / "trained.json").read_text())
    best = arm / trained["checkpoint"]
    record = json.loads(((arm / "stage2") / f"step-{STEPS:06d}" / "mindsmirror.json").read_text())
    assert record["step"] == STEPS and len(record["losses"]) == STEPS  # the resumed run kept the killed run's losses
    assert record["init_from"] == str(t5_v1_1_folder) and record["train"]["bf16"] is True
    student, _ = load_student(best)
    assert not torch.equal(student.lm_head.weight, student.shared.weight)  # still untied after training
    assert student.config.is_gated_act and not student.config.scale_decoder_outputs
    assert student.lm_head.weight.dtype == torch.float32  # bf16 autocast, float32 weights

    assert main(["evaluate", str(config_file)]) == 0
    scores = {(r.arm, r.split, r.metric): r for r in queries.latest_results(Store(str(tmp_path / "store")))}
    assert scores[("cot-1", "test", "accuracy")].n == DATASET["arithmetic"]["test"]
    assert scores[("cot-1", "test", "accuracy")].checkpoint == str(best)

    capsys.readouterr()
    assert main(["predict", str(best), "Tom has 3 apples and buys 4 more. How many apples does he have?"]) == 0
    # some Prefect releases print an empty line first
    answer, rationale = [line for line in capsys.readouterr().out.splitlines() if line.strip()][:2]
    assert answer.startswith("answer: ") and rationale.startswith("rationale: ")
    assert "<extra_id" not in answer + rationale and "<unk>" not in answer + rationale
