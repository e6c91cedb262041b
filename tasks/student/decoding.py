"""Decoding with more than one try: self-consistency and self-verification by the student itself.

A candidate is one sampled rationale (`explain: <question>`) and its answer: the answer sentence of
the rationale when it has one, else one sampled `predict: <question>` output; a verdict word is never
an answer (a candidate left with none only answers when no candidate has one). Both sampling modes
score the same candidates (same seed), so they differ only in judging:

- self_consistency: the answer most candidates agree on (ties: the one seen first);
- self_verify: the student judges every candidate on the stage-1 input format
  (`judge: Q: ... Proposed answer: <rationale> Evaluation:`); a candidate's score is the
  probability the student gives the label "correct" among the three verdict labels; the
  best-scoring candidate answers, ties broken by majority vote, then by order.

Inference cost per question, counted as sequences run through the student (a sampled rationale, a
sampled answer or a judgement each count one): greedy 1, self_consistency 2k, self_verify 3k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tasks.answers import answers_match
from tasks.config import EvalConfig
from tasks.student.batching import causal_batch, target_ids
from tasks.student.devices import autocast
from tasks.student.evaluation import VERDICTS, generate, is_verdict
from tasks.student.model import is_causal
from tasks.student.prefixes import EXPLAIN, JUDGE, PREDICT
from tasks.student.training import causal_logits
from tasks.teacher.parsing import parse_cot
from tasks.teacher.prompts import format_judged_input

SAMPLING_MODES = ("self_consistency", "self_verify")


def passes_per_question(mode: str, samples: int) -> int:
    """Sequences the student runs per question in `mode` (see the module docstring)."""
    return {"greedy": 1, "self_consistency": 2 * samples, "self_verify": 3 * samples}[mode]


@dataclass(frozen=True)
class Candidate:
    rationale: str
    answer: str
    verdict: str | None = None  # the student's most likely verdict word (self_verify only)
    score: float | None = None  # its probability of "correct" among the verdict words


@dataclass(frozen=True)
class Decoded:
    answer: str
    chosen: int  # index of the candidate that answered
    candidates: tuple[Candidate, ...]


def sample_candidates(
    model, tokenizer, questions: Sequence[str], answer_type: str, cfg: EvalConfig, *,
    device=None, max_input_length: int = 512, bf16: bool = False, progress: bool = False,
) -> list[list[Candidate]]:
    """cfg.samples candidates per question, seeded by cfg.seed."""
    options = dict(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, device=device,
                   samples=cfg.samples, temperature=cfg.temperature, max_input_length=max_input_length,
                   bf16=bf16, progress=progress)
    rationales = generate(model, tokenizer, questions, prefix=EXPLAIN, seed=cfg.seed, **options)
    answers = generate(model, tokenizer, questions, prefix=PREDICT, seed=cfg.seed + 1, **options)
    candidates = []
    for question, texts, predicted in zip(questions, rationales, answers):
        row = []
        for text, fallback in zip(texts, predicted):
            parsed = parse_cot(text, answer_type, question=question)
            row.append(Candidate(parsed.rationale or text, candidate_answer(parsed.answer, fallback)))
        candidates.append(row)
    return candidates


def candidate_answer(parsed: str | None, fallback: str) -> str:
    """A candidate's answer: its rationale's answer, else the sampled `predict:` output; "" when both
    are missing or only a verdict word (a student that also learned to judge may say one)."""
    for answer in (parsed, fallback):
        if answer and not is_verdict(answer):
            return answer
    return ""


def judge(
    model, tokenizer, judged_inputs: Sequence[str], batch_size: int = 64, *,
    device=None, max_input_length: int = 512, bf16: bool = False,
) -> list[tuple[str, float]]:
    """(most likely verdict, probability of "correct" among the verdicts) per judged input.

    Each verdict word is scored by the likelihood of the whole label ("correct" and its end token),
    teacher-forced: one encoder pass per input and one decoder pass per verdict, whatever the
    tokenizer makes of the words (a student that never saw them still gets a defined score).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if is_causal(model):
        return _judge_causal(model, tokenizer, judged_inputs, batch_size, device, max_input_length, bf16)
    verdict_ids = [ids.to(device) for ids in target_ids(tokenizer, VERDICTS, 8)]
    results: list[tuple[str, float]] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(judged_inputs), batch_size):
            chunk = [JUDGE + text for text in judged_inputs[start : start + batch_size]]
            encoded = tokenizer(chunk, max_length=max_input_length, truncation=True, padding=True,
                                return_tensors="pt").to(device)
            scores = []
            with autocast(device, bf16):
                hidden = model.get_encoder()(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
                for labels in verdict_ids:
                    labels = labels.expand(len(chunk), -1)
                    logits = model(encoder_outputs=hidden, attention_mask=encoded["attention_mask"],
                                   decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)).logits
                    scores.append(logits.float().log_softmax(-1).gather(-1, labels[..., None]).sum((1, 2)))
            probabilities = torch.stack(scores, -1).softmax(-1).cpu()
            for row in probabilities:
                results.append((VERDICTS[int(row.argmax())], float(row[VERDICTS.index("correct")])))
    model.train(was_training)
    return results


def _judge_causal(model, tokenizer, judged_inputs, batch_size, device, max_input_length, bf16):
    """judge() for a causal student: each verdict's likelihood after the prompt, one pass per verdict."""
    verdict_ids = target_ids(tokenizer, VERDICTS, 8)
    prompts = [torch.tensor(ids) for ids in tokenizer([JUDGE + text for text in judged_inputs],
                                                      max_length=max_input_length, truncation=True)["input_ids"]]
    scores = []
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, bf16):
        for ids in verdict_ids:
            per_verdict = []
            for start in range(0, len(prompts), batch_size):
                index = list(range(start, min(start + batch_size, len(prompts))))
                logits, targets = causal_logits(model, *causal_batch(prompts, [ids] * len(prompts), index,
                                                                     tokenizer.pad_token_id, device))
                logp = logits.float().log_softmax(-1).gather(-1, targets[:, None]).view(len(index), len(ids))
                per_verdict.append(logp.sum(1))
            scores.append(torch.cat(per_verdict))
    model.train(was_training)
    probabilities = torch.stack(scores, -1).softmax(-1).cpu()
    return [(VERDICTS[int(row.argmax())], float(row[VERDICTS.index("correct")])) for row in probabilities]


def judge_candidates(
    model, tokenizer, questions: Sequence[str], candidates: list[list[Candidate]], batch_size: int = 64,
    **options,
) -> list[list[Candidate]]:
    """The candidates with the student's verdict and score on each."""
    flat = [format_judged_input(q, c.rationale) for q, row in zip(questions, candidates) for c in row]
    verdicts = iter(judge(model, tokenizer, flat, batch_size, **options))
    return [[Candidate(c.rationale, c.answer, *next(verdicts)) for c in row] for row in candidates]


def _clusters(candidates: Sequence[Candidate], answer_type: str) -> list[int]:
    """For each candidate, the index of the first candidate whose answer matches its own."""
    first: list[int] = []
    for i, candidate in enumerate(candidates):
        same = next((j for j in first if answers_match(answer_type, candidate.answer, candidates[j].answer)), i)
        first.append(same)
    return first


def choose(candidates: Sequence[Candidate], mode: str, answer_type: str) -> Decoded:
    """The answer of `mode` from scored (self_verify) or unscored (self_consistency) candidates."""
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    cluster = _clusters(candidates, answer_type)
    votes = [cluster.count(cluster[i]) for i in range(len(candidates))]
    pool = [i for i, c in enumerate(candidates) if c.answer] or range(len(candidates))
    if mode == "self_verify":
        if any(c.score is None for c in candidates):
            raise ValueError("self_verify needs judged candidates (judge_candidates)")
        best = max(candidates[i].score for i in pool)
        pool = [i for i in pool if candidates[i].score == best]
    elif mode != "self_consistency":
        raise ValueError(f"unknown sampling decode mode {mode!r}; expected one of {SAMPLING_MODES}")
    chosen = max(pool, key=lambda i: (votes[i], -cluster[i], -i))
    return Decoded(candidates[chosen].answer, chosen, tuple(candidates))
