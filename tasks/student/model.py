"""The student: a seq2seq (T5 family) or a causal (decoder-only) model, pretrained or "tiny", with
or without LoRA adapters.

"tiny" is a small randomly initialised T5 with a tokenizer trained locally on the training texts, so
the whole pipeline runs offline in CPU minutes and never touches the hub. Any other value loads
through Hugging Face's cache like `from_pretrained` does: a hub id is downloaded once unless
HF_HUB_OFFLINE=1 (as in the tests), where only a cached or local model loads; presets and GGUF
files resolve to a local folder (tasks.student.pretrained). The family comes from the model's own
config (`is_encoder_decoder`). With student.lora the pretrained weights stay frozen and checkpoints
hold the adapter only (adapter_config.json names the base model folder).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from tasks.config import ConfigError, LoraSettings, StudentConfig, TinyStudentConfig
from tasks.student.prefixes import PREFIXES
from tasks.student.pretrained import resolve_model

TINY = "tiny"
ADAPTER = "adapter_config.json"  # a LoRA checkpoint: the adapter, its base model named inside
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Every printable ASCII character is in the alphabet, so only exotic characters become <unk>.
_ALPHABET = [c for c in string.printable if not c.isspace()] + ["\n", "▁"]


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `texts`, T5-style specials (pad=0, eos=1, unk=2), eos appended.

    Numbers seen often in training become single tokens, which a small student copies from the input
    far more easily than digit sequences (T5's cross-attention has no position bias, so copying "19"
    digit by digit needs positions learned from scratch): on 3,000 built-in problems with numbers up to
    20, 700 steps reached 85% test accuracy with whole-number tokens against 27% with one per digit. Numbers
    never seen still tokenise, digit by digit, because every digit is in the initial alphabet.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    # The task prefixes are part of every student input, so the tokenizer always learns them.
    tokenizer.train_from_iterator(list(texts) + list(PREFIXES), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tokenizer.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(sizes: TinyStudentConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0):
    """A randomly initialised T5 sized by `sizes`, its vocabulary that of `tokenizer`."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=sizes.d_model,
        d_kv=sizes.d_model // sizes.num_heads,
        d_ff=sizes.d_ff,
        num_layers=sizes.num_layers,
        num_decoder_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        dropout_rate=sizes.dropout,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5ForConditionalGeneration(config)


def build_student(
    cfg: StudentConfig, texts_for_vocab: Iterable[str], seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student of `cfg` and its tokenizer; `texts_for_vocab` trains the tiny tokenizer only."""
    if cfg.model == TINY:
        if cfg.lora is not None:
            raise ConfigError("student.lora adapts a pretrained student; the tiny student trains every weight "
                             "(remove student.lora or name a pretrained student.model)")
        tokenizer = build_tokenizer(texts_for_vocab, cfg.tiny.vocab_size)
        return build_tiny_model(cfg.tiny, tokenizer, seed), tokenizer
    model, tokenizer = load_student(resolve_model(cfg.model))
    return (model if cfg.lora is None else with_lora(model, cfg.lora, seed)), tokenizer


def with_lora(model: PreTrainedModel, lora: LoraSettings, seed: int = 0):
    """`model` frozen, with trainable low-rank adapters on lora.target_modules (a peft model)."""
    peft = _peft()
    task = "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM"
    settings = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task,
                          target_modules=lora.target_modules)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, settings)


def unwrap(model) -> PreTrainedModel:
    """The transformers model under a LoRA wrapper (its linear layers carry the adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_causal(model) -> bool:
    return not unwrap(model).config.is_encoder_decoder


def load_student(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved student (a checkpoint folder, a LoRA checkpoint, a local model folder or a cached hub id)
    and its tokenizer, in float32."""
    path = str(model_dir)
    if Path(path, ADAPTER).is_file():
        peft = _peft()
        base, _ = load_student(peft.LoraConfig.from_pretrained(path).base_model_name_or_path)
        with quiet_transformers():
            return peft.PeftModel.from_pretrained(base, path, is_trainable=True), _tokenizer(path, base)
    try:
        with quiet_transformers():
            family = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(path).is_encoder_decoder \
                else AutoModelForCausalLM
            model = family.from_pretrained(path, dtype=torch.float32)
            tokenizer = _tokenizer(path, model)
    except OSError as error:
        raise FileNotFoundError(
            f"student {path!r}: not a local model folder and not in the Hugging Face cache (or the hub is "
            f"unreachable); use student.model: tiny, a folder holding a saved seq2seq or causal model, or "
            f"download it first ({error})"
        ) from None
    return model, tokenizer


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("student.lora needs the peft package: pip install 'mindsmirror[students]'") from None
    return peft


def _tokenizer(path: str, model) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a student; a causal student's pads on the left (generation appends on
    the right) and pads with its end token when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_causal(model):
        tokenizer.padding_side = "left"
    return tokenizer


def save_student(model, tokenizer, path: str | Path) -> None:
    with quiet_transformers():
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


class _UntiedT5Filter(logging.Filter):
    """Drops transformers' warning on loading any T5 v1.1 checkpoint (google/t5-v1_1-*, flan-t5, and
    every checkpoint trained from them): since transformers 5 a T5 config always claims tied
    embeddings, so their separate LM head is reported as a config error whose advice
    (tie_word_embeddings=False) the config then overrides. The weights load untied, as they should."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "both are present in the checkpoints with different values" not in record.getMessage()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars (one per shard written or loaded) and the untied-T5
    warning for the duration."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    untied, logger = _UntiedT5Filter(), hf_logging.get_logger("transformers.modeling_utils")
    logger.addFilter(untied)
    try:
        yield
    finally:
        logger.removeFilter(untied)
        if was_enabled:
            hf_logging.enable_progress_bar()
