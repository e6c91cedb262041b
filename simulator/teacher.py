"""The simulated teacher's behaviour, independent of HTTP: answers, limits, faults, statistics.

It reads the question (and the judged chain of thought) out of prompts built by tasks.teacher.prompts,
looks up the gold label it was given, and writes template chains of thought that are sometimes
deliberately wrong, plus self-evaluations that mostly judge them right. Answers are deterministic in
(seed, request content, sample number), so tests repeat; sample k of one prompt is the same whether
it was asked for with n=5 or as the k-th n=1 call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping

from simulator.answers import builtin_examples, guess_gold, simulate_cot, simulate_evaluation
from simulator.limits import Bucket
from simulator.outcomes import CONTENT_FILTER_MESSAGE, FAULTS, Deviations, Faults, Outcome, error
from simulator.requests import read_request
from tasks.answers import EquationError
from tasks.teacher.keys import SIMULATED_MODEL

LABEL = "simulated teacher (a simulation for tests and demos, not a language model)"


def _prompt_tokens(messages: list) -> int:
    # Never more than tasks.teacher.client.estimate_tokens, so a client pacing on its estimate is not refused.
    return 3 + sum(3 + len(str(m.get("content") or "")) // 4 for m in messages if isinstance(m, dict))


def _completion_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class SimulatedTeacher:
    """The simulated teacher's behaviour, independent of HTTP (see the module docstring).

    Like a real endpoint it supports `n`, reports usage (about 4 characters per token), cuts replies
    at max_tokens (finish_reason "length"), enforces requests- and tokens-per-minute limits with 429
    and Retry-After, adds latency, and injects `faults` at set rates; `deviations` make it behave like
    servers that differ from OpenAI's (see simulator.outcomes).
    """

    def __init__(
        self,
        examples: Mapping[str, str] | None = None,
        answer_type: str = "equation",
        seed: int = 0,
        wrong_rate: float = 0.25,
        latency_ms: float = 0.0,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        uncertain_rate: float = 0.1,
        misjudge_rate: float = 0.1,
        ramble_rate: float = 0.0,
        burst: float = 2.0,
        tolerance_s: float = 0.25,
        api_key: str | None = None,
        models: tuple[str, ...] | None = None,
        context_window: int = 16385,
        faults: Faults | None = None,
        deviations: Deviations | None = None,
        clock=time.monotonic,
        **fault_rates,
    ):
        source = builtin_examples() if examples is None else examples
        self.examples = {question.strip(): str(gold) for question, gold in source.items()}
        self.answer_type = answer_type
        self.seed = seed
        self.wrong_rate, self.uncertain_rate, self.misjudge_rate = wrong_rate, uncertain_rate, misjudge_rate
        self.ramble_rate = ramble_rate
        self.latency_s = latency_ms / 1000
        self.rpm, self.tpm = rpm, tpm
        # The request bucket holds `burst` requests or tolerance_s worth of them, whichever is more:
        # a client pacing evenly, give or take tolerance_s of network and scheduling jitter, is
        # never refused; one sending faster than the limit is.
        self.burst = max(burst, (rpm or 0) / 60 * tolerance_s)
        self.api_key, self.models, self.context_window = api_key, models, context_window
        self.faults = dataclasses.replace(faults or Faults(), **fault_rates)
        self.deviations = deviations or Deviations()
        self.clock = clock
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget statistics, draws and rate-limit state (faults stay as set)."""
        with self._lock:
            self._fault_rng = random.Random(f"{self.seed}:faults")
            self._draws: Counter = Counter()
            self._started = self.clock()
            self._requests = self._served = self._rate_limited = 0
            self._in_flight = self._max_in_flight = 0
            self._prompt_tokens = self._completion_tokens = 0
            self._by_status: Counter = Counter()
            self._accepted: list[float] = []
            self._served_by: dict[str, Counter] = defaultdict(Counter)
            self._rpm = Bucket(self.rpm / 60, self.burst, 1.0) if self.rpm else None
            # Two seconds of tokens; admitting while the level is positive lets a large request through.
            self._tpm = Bucket(self.tpm / 60, self.tpm / 30, 1e-9) if self.tpm else None

    def set_faults(self, **changes) -> Faults:
        with self._lock:
            self.faults = dataclasses.replace(self.faults, **changes)
            return self.faults

    def set_deviations(self, **changes) -> Deviations:
        with self._lock:
            self.deviations = dataclasses.replace(self.deviations, **changes)
            return self.deviations

    def stats(self) -> dict:
        with self._lock:
            return {
                "simulation": LABEL,
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "completions_served": self._served,
                "rate_limited": self._rate_limited,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "accepted_timestamps": list(self._accepted),
                "served": {kind: dict(counts) for kind, counts in self._served_by.items()},
                "faults": dataclasses.asdict(self.faults),
                "deviations": dataclasses.asdict(self.deviations),
            }

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def count(self, status: str) -> None:
        with self._lock:
            self._by_status[status] += 1

    def chat(self, body: bytes, authorization: str | None) -> Outcome:
        """The outcome of one POST /v1/chat/completions."""
        with self._lock:
            self._requests += 1
        try:
            request = json.loads(body)
            messages, n = request["messages"], int(request.get("n") or 1)
            max_tokens = int(request.get("max_completion_tokens") or request.get("max_tokens") or 256)
            temperature = float(request.get("temperature", 1.0))
            model = str(request.get("model", ""))
            assert isinstance(messages, list) and n >= 1
        except (ValueError, KeyError, TypeError, AssertionError):
            return error(400, "the simulated teacher could not read this request body", "invalid_request_error")
        if request.get("stream"):
            return error(400, "the simulated teacher does not stream", "invalid_request_error")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            provided = (authorization or "").removeprefix("Bearer ")
            # Echoes the key it was sent, as careless servers do: the client must not repeat it.
            return error(401, f"Incorrect API key provided: {provided}.", "invalid_request_error",
                          "invalid_api_key")
        if self.models is not None and model not in self.models:
            return error(404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found")
        if self.deviations.ignore_n:
            n = 1
        prompt_tokens = _prompt_tokens(messages)
        if prompt_tokens + n * max_tokens > self.context_window:
            return error(400, f"This model's maximum context length is {self.context_window} tokens.",
                          "invalid_request_error", "context_length_exceeded")
        return self._admit(messages, n, max_tokens, temperature, prompt_tokens)

    def _admit(self, messages: list, n: int, max_tokens: int, temperature: float, prompt_tokens: int) -> Outcome:
        with self._lock:
            faults = self.faults
            forced = faults.next_faults[0] if faults.next_faults else None
            if forced is not None:
                self.faults = dataclasses.replace(faults, next_faults=faults.next_faults[1:])
            if forced == "rate_limit":
                return self._too_many(faults.retry_after_s)
            key, request = self._identify(messages)
            # Greedy decoding draws the same sample every time.
            draws = [0] * n if temperature == 0 else [self._draws[key] + i for i in range(n)]
            try:
                texts, reasons = zip(*(self._sample(request, key, draw, max_tokens) for draw in draws))
            except (EquationError, ValueError, KeyError) as problem:
                return error(500, f"the simulated teacher cannot answer this question: {problem}", "server_error")
            cost = prompt_tokens + sum(_completion_tokens(text) for text in texts)
            now = self.clock()
            wait = max([bucket.wait_s(now) for bucket in (self._rpm, self._tpm) if bucket], default=0.0)
            if wait > 0:
                return self._too_many(wait)
            if self._rpm:
                self._rpm.take(1)
            if self._tpm:
                self._tpm.take(cost)
            self._accepted.append(now - self._started)
            if self.deviations.filters(messages):
                refusal = error(400, CONTENT_FILTER_MESSAGE, None, "content_filter")
                refusal.label = "content_filter"
                return refusal
            if forced is not None:
                return self._fault(forced)
            draw = self._fault_rng.random()
            for name in FAULTS:
                rate = getattr(faults, name)
                if draw < rate or (name == "error_500" and faults.fail_all):
                    return self._fault(name)
                draw -= rate
            if temperature != 0:
                self._draws[key] += n
            self._served += n
            self._served_by[request.kind if request else "other"][request.question if request else key] += n
            completion_tokens = cost - prompt_tokens
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens
            number = self._requests
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
             "logprobs": None}
            for i, (text, reason) in enumerate(zip(texts, reasons))
        ]
        payload = {
            "id": f"chatcmpl-simulated-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": SIMULATED_MODEL,
            "system_fingerprint": SIMULATED_MODEL,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if self.deviations.no_usage:
            del payload["usage"]
        slow = any(phrase in str(m.get("content") or "") for phrase in faults.slow_prompts
                   for m in messages if isinstance(m, dict))
        return Outcome(200, payload, delay_s=faults.slow_s if slow else self.latency_s)

    def _too_many(self, wait_s: float) -> Outcome:
        self._rate_limited += 1
        headers = {} if self.deviations.no_retry_after else {
            "retry-after-ms": str(math.ceil(wait_s * 1000)), "retry-after": str(math.ceil(wait_s))}
        return error(429, f"Rate limit reached for the simulated teacher; try again in {wait_s:.3f}s.",
                     "requests", "rate_limit_exceeded", **headers)

    def _fault(self, name: str) -> Outcome:
        if name == "error_500":
            outcome = error(500, "The simulated teacher had an internal error (injected fault).", "server_error")
            outcome.delay_s = self.latency_s
            return outcome
        if name == "drop":
            return Outcome(drop=True, delay_s=self.latency_s, label="dropped")
        if name == "stall":
            return Outcome(drop=True, delay_s=self.faults.stall_s, label="stalled")
        return Outcome(200, raw=b'{"id": "chatcmpl-simulated", "choices": [{"index": 0, "mess',
                        delay_s=self.latency_s, label="malformed")

    def _identify(self, messages: list):
        request = read_request(messages)
        if request is None:
            last = next((m.get("content") for m in reversed(messages) if isinstance(m, dict)), "")
            return f"other|{last}", None
        return f"{request.kind}|{request.question}|{request.cot}", request

    def _sample(self, request, key: str, index: int, max_tokens: int) -> tuple[str, str]:
        rng = random.Random(f"{self.seed}|{key}|{index}")
        if request is None:
            text = "This simulated teacher only answers prompts built by tasks.teacher.prompts. The answer is unknown."
        else:
            answer_type = request.answer_type or self.answer_type
            gold = self.examples.get(request.question.strip())
            if request.kind == "cot":
                wrong = rng.random() < self.wrong_rate
                text = simulate_cot(request.question, gold or guess_gold(request.question, answer_type),
                                    answer_type, wrong, rng, self.deviations.junk_rate)
                if rng.random() < self.ramble_rate:
                    # Like a few-shot model that carries on with a question of its own.
                    text += f"\n\nQ: {request.question}\nA: {text}"
            else:
                text = simulate_evaluation(request.question, gold, request.cot or "", answer_type, rng,
                                           self.uncertain_rate, self.misjudge_rate, self.deviations.junk_rate)
        if _completion_tokens(text) > max_tokens:
            return text[: max_tokens * 4], "length"
        return text, "stop"
