"""A SIMULATED teacher: a local OpenAI-compatible server that is not a language model.

It exists for tests, benchmarks and the offline quickstart. It reads the question (and the judged
chain of thought) out of prompts built by tasks.teacher.prompts, looks up the gold label it was given, and
writes template chains of thought that are sometimes deliberately wrong, plus self-evaluations that
mostly judge them right. Everything it returns says so: the model is "simulated", and so is the
system fingerprint.

Like a real endpoint it supports `n`, reports usage (about 4 characters per token), cuts replies at
max_tokens (finish_reason "length"), enforces requests- and tokens-per-minute limits with 429 and
Retry-After, adds latency, and injects faults at set rates: 500s, dropped connections, stalls and
malformed bodies. Answers are deterministic in (seed, request content, sample number), so tests
repeat; sample k of one prompt is the same whether it was asked for with n=5 or as the k-th n=1 call.

Built on the standard library (ThreadingHTTPServer), one thread per connection, so latency is a
sleep and 64+ concurrent connections are fine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks.data.equations import EquationError
from tasks.simulator.answers import builtin_examples, guess_gold, simulate_cot, simulate_evaluation
from tasks.simulator.batches import BATCH_PATHS, batch_service
from tasks.teacher.prompts import read_request

log = logging.getLogger(__name__)

SIMULATED = "simulated"
LABEL = "simulated teacher (a simulation for tests and demos, not a language model)"


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

    def __post_init__(self):
        unknown = set(self.next_faults) - {"rate_limit", *_FAULTS}
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; use rate_limit, {', '.join(_FAULTS)}")
        object.__setattr__(self, "next_faults", tuple(self.next_faults))


_FAULTS = ("error_500", "drop", "stall", "malformed")


# ---------------------------------------------------------------------------------------------
# The server's state: limits, faults, statistics.


def _prompt_tokens(messages: list) -> int:
    # Never more than tasks.teacher.client.estimate_tokens, so a client pacing on its estimate is not refused.
    return 3 + sum(3 + len(str(m.get("content") or "")) // 4 for m in messages if isinstance(m, dict))


def _completion_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@dataclass
class _Outcome:
    status: int = 200
    payload: object = None
    headers: dict = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    raw: bytes | None = None
    label: str | None = None  # how /_stats counts it, when not by status code


def _error(status: int, message: str, kind: str, code: str | None = None, **headers) -> _Outcome:
    return _Outcome(status, {"error": {"message": message, "type": kind, "code": code, "param": None}},
                    dict(headers))


class _Bucket:
    """A token bucket that admits while its level is positive and may go into debt, so one large
    request is never refused forever; a client pacing at the bucket's rate never finds it empty."""

    def __init__(self, rate_per_s: float, capacity: float, need: float):
        self.rate, self.capacity, self.need = rate_per_s, capacity, need
        self.level, self.updated = capacity, None

    def _refill(self, now: float) -> None:
        if self.updated is not None:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.level >= self.need else (self.need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class SimulatedTeacher:
    """The simulated teacher's behaviour, independent of HTTP (see the module docstring)."""

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
            self._rpm = _Bucket(self.rpm / 60, self.burst, 1.0) if self.rpm else None
            # Two seconds of tokens; admitting while the level is positive lets a large request through.
            self._tpm = _Bucket(self.tpm / 60, self.tpm / 30, 1e-9) if self.tpm else None

    def set_faults(self, **changes) -> Faults:
        with self._lock:
            self.faults = dataclasses.replace(self.faults, **changes)
            return self.faults

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

    def chat(self, body: bytes, authorization: str | None) -> _Outcome:
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
            return _error(400, "the simulated teacher could not read this request body", "invalid_request_error")
        if request.get("stream"):
            return _error(400, "the simulated teacher does not stream", "invalid_request_error")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            provided = (authorization or "").removeprefix("Bearer ")
            # Echoes the key it was sent, as careless servers do: the client must not repeat it.
            return _error(401, f"Incorrect API key provided: {provided}.", "invalid_request_error",
                          "invalid_api_key")
        if self.models is not None and model not in self.models:
            return _error(404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found")
        prompt_tokens = _prompt_tokens(messages)
        if prompt_tokens + n * max_tokens > self.context_window:
            return _error(400, f"This model's maximum context length is {self.context_window} tokens.",
                          "invalid_request_error", "context_length_exceeded")
        return self._admit(messages, n, max_tokens, temperature, prompt_tokens)

    def _admit(self, messages: list, n: int, max_tokens: int, temperature: float, prompt_tokens: int) -> _Outcome:
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
            except (EquationError, ValueError, KeyError) as error:
                return _error(500, f"the simulated teacher cannot answer this question: {error}", "server_error")
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
            if forced is not None:
                return self._fault(forced)
            draw = self._fault_rng.random()
            for name in _FAULTS:
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
            "model": SIMULATED,
            "system_fingerprint": SIMULATED,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return _Outcome(200, payload, delay_s=self.latency_s)

    def _too_many(self, wait_s: float) -> _Outcome:
        self._rate_limited += 1
        return _error(429, f"Rate limit reached for the simulated teacher; try again in {wait_s:.3f}s.",
                      "requests", "rate_limit_exceeded", **{"retry-after-ms": str(math.ceil(wait_s * 1000)),
                                                           "retry-after": str(math.ceil(wait_s))})

    def _fault(self, name: str) -> _Outcome:
        if name == "error_500":
            outcome = _error(500, "The simulated teacher had an internal error (injected fault).", "server_error")
            outcome.delay_s = self.latency_s
            return outcome
        if name == "drop":
            return _Outcome(drop=True, delay_s=self.latency_s, label="dropped")
        if name == "stall":
            return _Outcome(drop=True, delay_s=self.faults.stall_s, label="stalled")
        return _Outcome(200, raw=b'{"id": "chatcmpl-simulated", "choices": [{"index": 0, "mess',
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
                                    answer_type, wrong, rng)
                if rng.random() < self.ramble_rate:
                    # Like a few-shot model that carries on with a question of its own.
                    text += f"\n\nQ: {request.question}\nA: {text}"
            else:
                text = simulate_evaluation(request.question, gold, request.cot or "", answer_type, rng,
                                           self.uncertain_rate, self.misjudge_rate)
        if _completion_tokens(text) > max_tokens:
            return text[: max_tokens * 4], "length"
        return text, "stop"


# ---------------------------------------------------------------------------------------------
# HTTP.


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimulatedTeacher/1 (simulation; not a language model)"
    timeout = 120  # idle keep-alive connections are closed after this long

    @property
    def teacher(self) -> SimulatedTeacher:
        return self.server.teacher

    def log_message(self, format: str, *args) -> None:
        log.debug("simulated teacher: " + format, *args)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            models = self.teacher.models or (SIMULATED,)
            self._send(_Outcome(200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": LABEL} for model in models
            ]}))
        elif path == "/_stats":
            self._send(_Outcome(200, self.teacher.stats()))
        elif path.startswith(BATCH_PATHS):
            self._batches("GET", b"")
        else:
            self._send(_error(404, f"no such path on the simulated teacher: {path}", "invalid_request_error"))

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        body = self._body()
        if path in ("/v1/chat/completions", "/chat/completions"):
            self.teacher.enter()
            try:
                outcome = self.teacher.chat(body, self.headers.get("Authorization"))
                self._send(outcome)
            finally:
                self.teacher.leave()
        elif path == "/_reset":
            self.teacher.reset()
            self._send(_Outcome(200, {"reset": True}))
        elif path == "/_faults":
            try:
                faults = self.teacher.set_faults(**json.loads(body or b"{}"))
            except (TypeError, ValueError) as error:
                self._send(_error(400, f"bad fault settings: {error}", "invalid_request_error"))
            else:
                self._send(_Outcome(200, dataclasses.asdict(faults)))
        elif path.startswith(BATCH_PATHS):
            self._batches("POST", body)
        else:
            self._send(_error(404, f"no such path on the simulated teacher: {path}", "invalid_request_error"))

    def _batches(self, method: str, body: bytes) -> None:
        status, payload, raw = batch_service(self.teacher).respond(method, self.path, body, self.headers)
        self._send(_Outcome(status, payload, raw=raw))

    def _send(self, outcome: _Outcome) -> None:
        if outcome.delay_s:
            self.teacher.closing.wait(outcome.delay_s)
        self.teacher.count(outcome.label or str(outcome.status))
        if outcome.drop:
            self.close_connection = True
            return
        body = outcome.raw if outcome.raw is not None else json.dumps(outcome.payload).encode()
        try:
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the listen backlog; the default of 5 refuses bursts of new connections

    def __init__(self, address, teacher: SimulatedTeacher):
        super().__init__(address, _Handler)
        self.teacher = teacher


@dataclass
class RunningSimulator:
    """A simulated teacher serving in a background thread of this process."""

    url: str  # ends in /v1: pass it as the client's base_url
    port: int
    teacher: SimulatedTeacher
    _server: _Server
    _thread: threading.Thread

    def stats(self) -> dict:
        return self.teacher.stats()

    def set_faults(self, **changes) -> Faults:
        return self.teacher.set_faults(**changes)

    def reset(self) -> None:
        self.teacher.reset()

    def close(self) -> None:
        self.teacher.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_simulator(
    examples: Mapping[str, str] | None = None,
    answer_type: str = "equation",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **options,
) -> RunningSimulator:
    """Start a simulated teacher in a background thread (port 0: any free port).

    `examples` maps question text to gold label (None: the built-in arithmetic problems); `options`
    are SimulatedTeacher's keyword arguments (seed, wrong_rate, latency_ms, rpm, tpm, fault rates...).
    """
    teacher = SimulatedTeacher(examples, answer_type, **options)
    server = _Server((host, port), teacher)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="simulated-teacher", daemon=True)
    thread.start()
    bound = server.server_address[1]
    log.info("%s listening on http://%s:%d/v1", LABEL, host, bound)
    return RunningSimulator(f"http://{host}:{bound}/v1", bound, teacher, server, thread)


def serve_forever(
    examples: Mapping[str, str] | None = None,
    answer_type: str = "equation",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options,
) -> None:
    """Run a simulated teacher in the foreground until interrupted (`mindsmirror teacher serve`)."""
    running = start_simulator(examples, answer_type, host=host, port=port, **options)
    print(f"SIMULATED teacher (not a language model) serving {len(running.teacher.examples)} questions at "
          f"{running.url} -- Ctrl-C to stop", flush=True)
    try:
        running._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        running.close()
