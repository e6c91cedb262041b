"""What the simulated teacher can answer: outcomes, injected faults, and deviations from OpenAI.

Faults are failures drawn at set rates (500s, dropped connections, stalls, malformed bodies).
Deviations are the ways some real OpenAI-compatible servers behave differently from OpenAI's own,
switched on to test that the client copes: a server that ignores `n`, one that sends no `usage`,
429s without Retry-After, and content-filter refusals of chosen prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAULTS = ("error_500", "drop", "stall", "malformed")

# The message Azure OpenAI sends with its content-filter 400 (code "content_filter").
CONTENT_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
    "Please modify your prompt and retry."
)


@dataclass(frozen=True)
class Faults:
    """Fault injection, each a probability per chat request (drawn from the seeded generator)."""

    error_500: float = 0.0
    drop: float = 0.0  # close the connection without a response
    stall: float = 0.0  # hold the request for stall_s, then close without a response
    stall_s: float = 30.0
    malformed: float = 0.0  # 200 with a body that is not valid JSON
    fail_all: bool = False  # every chat request gets a 500
    # Faults for the next requests, in order, whatever the rates: "rate_limit" (a 429 with
    # Retry-After: retry_after_s), "error_500", "drop", "stall" or "malformed".
    next_faults: tuple[str, ...] = ()
    retry_after_s: float = 1.0
    # Requests whose prompt contains any of these strings are answered, but only after slow_s.
    slow_prompts: tuple[str, ...] = ()
    slow_s: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "slow_prompts", tuple(self.slow_prompts))
        unknown = set(self.next_faults) - {"rate_limit", *FAULTS}
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; use rate_limit, {', '.join(FAULTS)}")
        object.__setattr__(self, "next_faults", tuple(self.next_faults))


@dataclass(frozen=True)
class Deviations:
    """Server behaviours that differ from OpenAI's, each seen in a real OpenAI-compatible server."""

    ignore_n: bool = False  # one choice back whatever `n` asks for (llama.cpp's server)
    no_usage: bool = False  # no `usage` in the response body
    no_retry_after: bool = False  # 429s carry neither Retry-After nor retry-after-ms
    # A prompt containing any of these strings is refused with a content-filter 400 (Azure OpenAI).
    content_filter: tuple[str, ...] = ()
    # This share of outputs has another script's text glued straight after the answer or verdict,
    # then rambles on (Gemma 3 270M behind llama.cpp: "The answer is (8 * 35).で購入").
    junk_rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "content_filter", tuple(self.content_filter))

    def filters(self, messages: list) -> bool:
        text = "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        return any(phrase in text for phrase in self.content_filter)


@dataclass
class Outcome:
    """The response to send: a status and JSON payload, or a raw body, or a dropped connection."""

    status: int = 200
    payload: object = None
    headers: dict = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    raw: bytes | None = None
    label: str | None = None  # how /_stats counts it, when not by status code


def error(status: int, message: str, kind: str | None, code: str | None = None, **headers) -> Outcome:
    """An error in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""
    return Outcome(status, {"error": {"message": message, "type": kind, "code": code, "param": None}},
                   dict(headers))
