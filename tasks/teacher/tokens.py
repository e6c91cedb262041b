"""The one token estimator: what a request may use before the server says what it did."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Rough tokens per character of English text; rate limits and cost estimates only need an upper-ish
# bound, corrected by the usage the server reports (RateLimiter.settle).
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4  # role and separators in the chat format
_TOKENS_PER_REQUEST = 3


def estimate_tokens(messages: Sequence[dict], n: int, max_tokens: int) -> int:
    """Tokens a request may use: its prompt (estimated from characters) plus n * max_tokens."""
    prompt = _TOKENS_PER_REQUEST + sum(
        _TOKENS_PER_MESSAGE + math.ceil(len(str(m.get("content") or "")) / _CHARS_PER_TOKEN) for m in messages
    )
    return prompt + n * max_tokens


def estimate_completion_tokens(texts: Sequence[str]) -> int:
    """Tokens of the texts a server returned without `usage`."""
    return sum(math.ceil(len(text) / _CHARS_PER_TOKEN) for text in texts)
