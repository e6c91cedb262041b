"""The student: a T5 encoder-decoder, either pretrained (a Hugging Face id or a local folder) or "tiny".

"tiny" is a small randomly initialised T5 with a tokenizer trained locally on the training texts, so
the whole pipeline runs offline in CPU minutes and never touches the hub. Any other value loads
through Hugging Face's cache like `from_pretrained` does: a hub id is downloaded once unless
HF_HUB_OFFLINE=1 (as in the tests), where only a cached or local model loads.
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
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from tasks.config import StudentConfig, TinyStudentConfig
from tasks.student.prefixes import PREFIXES

TINY = "tiny"
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
        dropout_rate=0.1,
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
        tokenizer = build_tokenizer(texts_for_vocab, cfg.tiny.vocab_size)
        return build_tiny_model(cfg.tiny, tokenizer, seed), tokenizer
    return load_student(cfg.model)


def load_student(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved student (a checkpoint folder, a local model folder or a cached hub id) and its tokenizer."""
    path = str(model_dir)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSeq2SeqLM.from_pretrained(path)
    except OSError as error:
        raise FileNotFoundError(
            f"student {path!r}: not a local model folder and not in the Hugging Face cache (or the hub is "
            f"unreachable); use student.model: tiny, a folder holding a saved seq2seq model, or download "
            f"it first ({error})"
        ) from None
    return model, tokenizer


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
