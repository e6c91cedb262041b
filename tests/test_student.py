"""The student model and its locally built tokenizer (no download, ever)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tasks.config import StudentConfig, TinyStudentConfig
from tasks.student.model import build_student, build_tokenizer, load_student, save_student

TEXTS = [
    "Luke scored 84 points after playing 2 rounds.\nHow many points did he score per round?",
    "( 84.0 / 2.0 )",
    "Luke scored 84 points in 2 rounds. 84 / 2 = 42. The answer is 42.",
    "Q: How many?\nProposed answer: 3 + 4 = 7.\nEvaluation result: the given answer is correct",
]
SIZES = TinyStudentConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=200)


def test_tokenizer_keeps_frequent_numbers_whole_and_spells_out_unseen_ones():
    tokenizer = build_tokenizer(TEXTS, vocab_size=200)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("84 and 90713")["input_ids"])
    assert "▁84" in tokens  # seen three times: one token, copied whole by the student
    assert "".join(t for t in tokens if t.isdigit()) == "90713"
    assert "<unk>" not in tokens


@pytest.mark.parametrize(
    "text",
    ["( 84.0 / 2.0 )", "( ( 17.0 + 15.0 ) - 2.0 )", "predict: Luke has 7 pens.\nHow many?", "entailment"],
)
def test_tokenizer_round_trips_text_exactly(text):
    tokenizer = build_tokenizer(TEXTS, vocab_size=200)
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_tokenizer_has_t5_specials_and_appends_eos():
    tokenizer = build_tokenizer(TEXTS, vocab_size=200)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("7")["input_ids"][-1] == tokenizer.eos_token_id
    assert len(tokenizer) <= 200


def test_tiny_student_is_sized_by_the_config_and_deterministic_per_seed():
    cfg = StudentConfig(tiny=SIZES)
    model, tokenizer = build_student(cfg, TEXTS, seed=3)
    again, _ = build_student(cfg, TEXTS, seed=3)
    other, _ = build_student(cfg, TEXTS, seed=4)
    assert (
        model.config.d_model == 32 and model.config.num_layers == 1 and model.config.num_decoder_layers == 1
    )
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    assert torch.equal(model.shared.weight, again.shared.weight)
    assert not torch.equal(model.shared.weight, other.shared.weight)


def test_tiny_student_dropout_is_t5s_unless_the_config_sets_it():
    model, _ = build_student(StudentConfig(tiny=SIZES), TEXTS)
    without, _ = build_student(StudentConfig(tiny=SIZES.model_copy(update={"dropout": 0.0})), TEXTS)
    assert model.config.dropout_rate == 0.1 and without.config.dropout_rate == 0.0
    # At its default the dropout is left out of the config's dump, which is part of a trained
    # student's id: students trained before it was an option are not retrained.
    assert "dropout" not in StudentConfig(tiny=SIZES).model_dump()["tiny"]
    assert StudentConfig(tiny={"dropout": 0.0}).model_dump()["tiny"]["dropout"] == 0.0


def test_saved_student_loads_back_with_the_same_outputs(tmp_path):
    model, tokenizer = build_student(StudentConfig(tiny=SIZES), TEXTS)
    save_student(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer = load_student(tmp_path)
    batch = tokenizer(["predict: Luke scored 84 points."], return_tensors="pt")
    decoder_input_ids = torch.zeros((1, 3), dtype=torch.long)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model(**batch, decoder_input_ids=decoder_input_ids).logits
        actual = loaded(**batch, decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(expected, actual)
    assert loaded_tokenizer("( 3.0 + 5.0 )")["input_ids"] == tokenizer("( 3.0 + 5.0 )")["input_ids"]


def test_a_model_that_is_neither_local_nor_cached_fails_with_the_fix_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="student.model: tiny"):
        build_student(StudentConfig(model=str(tmp_path / "no-such-model")), TEXTS)
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        load_student("mindsmirror-test/certainly-not-cached-t5")
