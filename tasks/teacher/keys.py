"""Content keys: a sample's key hashes everything that determines the teacher's answer.

Two requests with the same key would buy the same answer, so the store anti-joins wanted keys
against stored keys and the teacher is asked only for what is missing. The key does not include `n`:
sample i of a request with n=5 and sample i of a top-up request are interchangeable draws.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
SIMULATED_ENDPOINT = "simulated://teacher"
# The model name the simulated teacher answers with; stored rows carry it as their teacher_model.
SIMULATED_MODEL = "simulated"


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int


def endpoint_identity(base_url: str | None) -> str:
    """The endpoint part of a key: the URL without a trailing slash (the key never includes a secret)."""
    return (base_url or DEFAULT_OPENAI_URL).rstrip("/")


def sample_key(
    *,
    endpoint: str,
    model: str,
    prompt_version: str,
    messages: list[dict],
    sampling: Sampling,
    index: int,
    judged: str | None = None,
) -> str:
    """`judged` is the key of the chain of thought an evaluation judges: two CoTs with the same text
    are still two samples, each with its own evaluations."""
    return sample_keys(endpoint=endpoint, model=model, prompt_version=prompt_version, messages=messages,
                       sampling=sampling, indices=[index], judged=judged)[0]


def sample_keys(
    *,
    endpoint: str,
    model: str,
    prompt_version: str,
    messages: list[dict],
    sampling: Sampling,
    indices,
    judged: str | None = None,
) -> list[str]:
    """The sample keys of one prompt at each of `indices`: the JSON of everything but the index is
    written and hashed once, and each key hashes on from there (a plan derives millions of them)."""
    dump = {"ensure_ascii": False, "sort_keys": True, "separators": (",", ":")}
    head = json.dumps(
        [endpoint, model, prompt_version, messages, sampling.temperature, sampling.top_p, sampling.max_tokens],
        **dump,
    )
    prefix = hashlib.sha256(head[:-1].encode("utf-8"))
    tail = "," + json.dumps(judged, **dump) + "]"
    keys = []
    for index in indices:
        digest = prefix.copy()
        digest.update(f",{int(index)}{tail}".encode())  # an int's JSON is its decimal form
        keys.append(digest.hexdigest()[:32])
    return keys


def _reference_key(endpoint, model, prompt_version, messages, sampling, index, judged) -> str:
    """The key as defined: one JSON payload hashed whole (sample_keys must give exactly this)."""
    payload = json.dumps(
        [endpoint, model, prompt_version, messages, sampling.temperature, sampling.top_p, sampling.max_tokens,
         index, judged],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
