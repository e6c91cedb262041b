"""Training rows as token ids, and the order they are batched in.

Every row is tokenised once up front; batches are cut from length-sorted windows so a batch pads
to similar lengths, and the order is a function of (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from tasks.config import StudentConfig
from tasks.student.prefixes import task_of

IGNORE = -100  # target id that the loss skips (padding)
# Batches are sorted by length within windows of this many batches: long enough to group similar
# lengths, short enough that consecutive steps still see a mix of lengths over an epoch.
SORT_WINDOW = 50


class Encoded(NamedTuple):
    """Training rows tokenised once, as per-row id tensors."""

    predict_inputs: list[torch.Tensor]
    labels: list[torch.Tensor]
    explain_inputs: list[torch.Tensor | None]
    rationales: list[torch.Tensor | None]
    lengths: list[int]  # tokens a row costs; batches group rows of similar cost


def encode(rows: Sequence, tokenizer, student: StudentConfig, explain: bool) -> Encoded:
    """Every row's label input and label, and (if `explain`) rationale input and rationale; the
    inputs carry the prefixes of the row's task (answering, or judging for self-evaluations)."""

    def ids(texts: list[str], limit: int) -> list[torch.Tensor]:
        encoded = tokenizer(texts, max_length=limit, truncation=True)["input_ids"]
        return [torch.tensor(seq) for seq in encoded]

    def targets(texts: list[str]) -> list[torch.Tensor]:
        return target_ids(tokenizer, texts, student.max_target_length)

    inputs = [row.input for row in rows]
    predict_inputs = ids([task_of(row).label + row.input for row in rows], student.max_input_length)
    labels = targets([row.label for row in rows])
    explain_inputs: list[torch.Tensor | None] = [None] * len(rows)
    rationales: list[torch.Tensor | None] = [None] * len(rows)
    have = [i for i, row in enumerate(rows) if explain and row.rationale]
    if have:
        for i, e, r in zip(
            have,
            ids([task_of(rows[i]).rationale + inputs[i] for i in have], student.max_input_length),
            targets([rows[i].rationale for i in have]),
        ):
            explain_inputs[i], rationales[i] = e, r
    lengths = [
        len(p) + len(lab) + (len(r) if r is not None else 0)
        for p, lab, r in zip(predict_inputs, labels, rationales)
    ]
    return Encoded(predict_inputs, labels, explain_inputs, rationales, lengths)


def target_ids(tokenizer, texts: Sequence[str], limit: int) -> list[torch.Tensor]:
    """Target token ids ending with the end token, for both families: a causal tokenizer's own
    specials (a leading <bos>) belong to the prompt, not the target; at most `limit` ids."""
    encoded = tokenizer(list(texts), add_special_tokens=False, max_length=limit - 1, truncation=True)["input_ids"]
    return [torch.tensor([*seq, tokenizer.eos_token_id]) for seq in encoded]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of row indices in batches: shuffled, sorted by length within windows, batch order shuffled."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * SORT_WINDOW):
        window = sorted(order[start : start + batch_size * SORT_WINDOW], key=lengths.__getitem__)
        batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


def batches_from(lengths: Sequence[int], batch_size: int, seed: int, skip: int) -> Iterator[list[int]]:
    """Endless batches, epoch after epoch, starting after the first `skip` (for resuming)."""
    for epoch in range(10**9):
        for batch in epoch_batches(lengths, batch_size, seed, epoch):
            if skip:
                skip -= 1
            else:
                yield batch


def causal_batch(prompts, targets, index, pad_id, device):
    """The rows `index` of one task as one sequence each, prompt then target, right-padded: ids,
    attention mask, and labels that are IGNORE on the prompt and the padding."""
    sequences = [torch.cat([prompts[i], targets[i]]) for i in index]
    labels = [torch.cat([torch.full_like(prompts[i], IGNORE), targets[i]]) for i in index]
    input_ids = pad_sequence(sequences, batch_first=True, padding_value=pad_id).to(device)
    mask = pad_sequence([torch.ones_like(s) for s in sequences], batch_first=True, padding_value=0).to(device)
    return input_ids, mask, pad_sequence(labels, batch_first=True, padding_value=IGNORE).to(device)


def task_batch(inputs, targets, index, pad_id, device):
    """The rows `index` of one task, padded: inputs with pad_id, targets with IGNORE."""
    input_ids = pad_sequence([inputs[i] for i in index], batch_first=True, padding_value=pad_id).to(device)
    target_ids = pad_sequence([targets[i] for i in index], batch_first=True, padding_value=IGNORE).to(device)
    return input_ids, target_ids
