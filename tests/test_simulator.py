"""The simulated teacher: a real local HTTP server, spoken to with plain HTTP."""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from simulator.answers import simulate_cot, simulate_evaluation
from simulator.server import Deviations, SimulatedTeacher, start_simulator
from tasks.answers import answers_match
from tasks.data.arithmetic import generate_problems
from tasks.teacher.parsing import parse_cot, parse_evaluation
from tasks.teacher.prompts import cot_messages, eval_messages

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROBLEMS = generate_problems(20, 0, "train")
EXAMPLES = {problem.question: problem.equation for problem in PROBLEMS}
QUESTION, GOLD = PROBLEMS[4].question, PROBLEMS[4].equation  # a two-step problem


def _post(url: str, payload: dict, headers: dict | None = None) -> tuple[int, dict, dict | bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, header, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, header, body = error.code, dict(error.headers), error.read()
    try:
        return status, {k.lower(): v for k, v in header.items()}, json.loads(body)
    except ValueError:
        return status, header, body


def _ask(sim, messages, n=1, max_tokens=256, temperature=0.7, **extra):
    body = {"model": "simulated-teacher", "messages": messages, "n": n, "max_tokens": max_tokens,
            "temperature": temperature, **extra}
    return _post(f"{sim.url}/chat/completions", body)


@pytest.fixture
def sim():
    with start_simulator(EXAMPLES, "equation", seed=7, wrong_rate=0.3) as running:
        yield running


def test_every_reply_is_labelled_as_a_simulation(sim):
    with urllib.request.urlopen(f"{sim.url}/models") as response:
        models = json.loads(response.read())
    assert models["data"][0]["id"] == "simulated" and "not a language model" in models["data"][0]["owned_by"]
    status, _, reply = _ask(sim, cot_messages("equation", QUESTION))
    assert status == 200
    assert reply["model"] == "simulated" and reply["system_fingerprint"] == "simulated"


def test_cot_request_returns_n_parseable_samples_with_usage(sim):
    status, _, reply = _ask(sim, cot_messages("equation", QUESTION), n=8)
    assert status == 200 and [c["index"] for c in reply["choices"]] == list(range(8))
    parsed = [parse_cot(c["message"]["content"], "equation", c["finish_reason"]) for c in reply["choices"]]
    assert all(p.error is None for p in parsed)
    right = [answers_match("equation", p.answer, GOLD) for p in parsed]
    assert any(right) and not all(right)  # wrong_rate=0.3: varied, sometimes wrong
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 100
    assert usage["completion_tokens"] == sum(-(-len(c["message"]["content"]) // 4) for c in reply["choices"])
    assert sim.stats()["served"]["cot"] == {QUESTION: 8}


def test_sample_k_is_the_same_asked_with_n_or_one_at_a_time(sim):
    _, _, together = _ask(sim, cot_messages("equation", QUESTION), n=4)
    sim.reset()
    one_by_one = [_ask(sim, cot_messages("equation", QUESTION))[2] for _ in range(4)]
    assert [c["message"]["content"] for c in together["choices"]] == [
        reply["choices"][0]["message"]["content"] for reply in one_by_one
    ]


def test_temperature_zero_repeats_itself(sim):
    texts = {_ask(sim, cot_messages("equation", QUESTION), n=3, temperature=0)[2]["choices"][i]["message"]["content"]
             for i in range(3)}
    assert len(texts) == 1


def test_evaluations_judge_the_cot_they_are_given(sim):
    right = f"{GOLD} is the plan. The answer is {GOLD}."
    wrong = "Guessing. The answer is (1 + 1)."
    verdicts = {}
    for cot in (right, wrong):
        _, _, reply = _ask(sim, eval_messages("equation", QUESTION, cot), n=20)
        verdicts[cot] = [parse_evaluation(c["message"]["content"]).verdict for c in reply["choices"]]
    assert verdicts[right].count("correct") >= 12 and verdicts[wrong].count("wrong") >= 12
    assert "uncertain" in verdicts[right] + verdicts[wrong]
    assert sim.stats()["served"]["evaluation"] == {QUESTION: 40}


def test_max_tokens_cuts_the_reply_with_finish_reason_length(sim):
    _, _, reply = _ask(sim, cot_messages("equation", QUESTION), max_tokens=5)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["message"]["content"]) == 20
    assert parse_cot(choice["message"]["content"], "equation", "length").error


def test_unknown_questions_get_a_guess_and_uncertain_evaluations(sim):
    question = "Zed has 4 kites and buys 9 more.\nHow many kites does Zed have?"
    _, _, reply = _ask(sim, cot_messages("equation", question), n=3)
    assert all(parse_cot(c["message"]["content"], "equation").error is None for c in reply["choices"])
    _, _, judged = _ask(sim, eval_messages("equation", question, "The answer is (4 + 9)."), n=3)
    assert {parse_evaluation(c["message"]["content"]).verdict for c in judged["choices"]} == {"uncertain"}


@pytest.mark.parametrize("answer_type", ["equation", "choice", "nli", "number", "text"])
def test_template_cots_reach_the_gold_answer_unless_told_to_be_wrong(answer_type):
    question, gold = {
        "equation": (QUESTION, GOLD),
        "choice": ("Where are plates kept?\nAnswer Choices:\n(a) oven\n(b) cupboard\n(c) lake\n(d) sky\n(e) car",
                   "cupboard"),
        "nli": ("Premise: The bridge opened in 1932.\nHypothesis: The bridge is old.", "entailment"),
        "number": ("How many legs do 3 cats have?", "12"),
        "text": ("What is the capital of France?", "Paris"),
    }[answer_type]
    rng = random.Random(0)
    for wrong in (False, True):
        for _ in range(20):
            cot = simulate_cot(question, gold, answer_type, wrong, rng)
            parsed = parse_cot(cot, answer_type, question=question)
            assert parsed.error is None, cot
            assert answers_match(answer_type, parsed.answer, gold) is not wrong, cot
            evaluation = simulate_evaluation(question, gold, cot, answer_type, rng, 0.0, 0.0)
            assert parse_evaluation(evaluation).verdict == ("wrong" if wrong else "correct"), evaluation


def _load(name: str) -> list[dict]:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip("the shared datasets folder (../shared/data beside the repository) is not present")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_template_cots_work_for_every_real_svamp_and_cqa_question():
    rng = random.Random(1)
    cases = [(row["input"], row["label"], "equation") for row in _load("svamp/svamp_test.json")]
    cases += [
        (row["question"] + "\nAnswer Choices:\n" + "\n".join(f"({letter}) {c}" for letter, c in zip("abcde", row["choices"])),
         row["answer"], "choice")
        for row in _load("cqa/cqa_test.json")
    ]
    for question, gold, answer_type in cases:
        for wrong in (False, True):
            parsed = parse_cot(simulate_cot(question, gold, answer_type, wrong, rng), answer_type, question=question)
            assert parsed.error is None
            assert answers_match(answer_type, parsed.answer, gold) is not wrong


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rpm_limit_answers_429_with_retry_after():
    clock = FakeClock()
    with start_simulator(EXAMPLES, rpm=60, clock=clock) as sim:
        statuses = [_ask(sim, cot_messages("equation", QUESTION))[0] for _ in range(2)]
        status, headers, body = _ask(sim, cot_messages("equation", QUESTION))
        assert statuses == [200, 200] and status == 429  # a bucket of two requests, then empty
        assert headers["retry-after-ms"] == "1000" and headers["retry-after"] == "1"
        assert body["error"]["code"] == "rate_limit_exceeded"
        clock.now = 1.0
        assert _ask(sim, cot_messages("equation", QUESTION))[0] == 200
        assert sim.stats()["rate_limited"] == 1 and len(sim.stats()["accepted_timestamps"]) == 3


def test_a_client_pacing_at_exactly_sixty_over_rpm_is_never_refused():
    clock = FakeClock()
    with start_simulator(EXAMPLES, rpm=120, clock=clock) as sim:
        jitter = random.Random(3)
        for k in range(40):
            # sent every 0.5 s on average, each up to 0.4 of an interval early or late
            clock.now = k * 0.5 + jitter.uniform(-0.2, 0.2)
            assert _ask(sim, cot_messages("equation", QUESTION))[0] == 200
        assert sim.stats()["rate_limited"] == 0


def test_tpm_limit_counts_prompt_and_completion_tokens():
    clock = FakeClock()
    with start_simulator(EXAMPLES, tpm=6000, clock=clock) as sim:  # 100 tokens/s, a bucket of 200
        first = _ask(sim, cot_messages("equation", QUESTION), n=4)
        assert first[0] == 200
        used = first[2]["usage"]["total_tokens"]
        status, headers, _ = _ask(sim, cot_messages("equation", QUESTION))
        assert status == 429
        assert int(headers["retry-after-ms"]) == pytest.approx((used - 200) * 10, abs=2)
        clock.now = (used - 200) / 100 + 0.01
        assert _ask(sim, cot_messages("equation", QUESTION))[0] == 200


def test_faults_at_set_rates_and_at_run_time():
    with start_simulator(EXAMPLES, seed=1, error_500=0.2, drop=0.1, malformed=0.1) as sim:
        outcomes = []
        for _ in range(60):
            try:
                status, _, body = _ask(sim, cot_messages("equation", QUESTION))
                outcomes.append("malformed" if isinstance(body, bytes) else str(status))
            except (http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError):
                outcomes.append("dropped")
        counts = {name: outcomes.count(name) for name in set(outcomes)}
        assert counts == sim.stats()["by_status"]
        assert 5 <= counts["500"] <= 20 and 1 <= counts["dropped"] <= 12 and 1 <= counts["malformed"] <= 12
        _post(f"{sim.url.removesuffix('/v1')}/_faults", {"error_500": 0, "drop": 0, "malformed": 0,
                                                         "next_faults": ["rate_limit"], "retry_after_s": 90})
        status, headers, _ = _ask(sim, cot_messages("equation", QUESTION))
        assert status == 429 and headers["retry-after"] == "90"
        assert _ask(sim, cot_messages("equation", QUESTION))[0] == 200
        sim.set_faults(fail_all=True)
        assert _ask(sim, cot_messages("equation", QUESTION))[0] == 500


def test_stall_holds_the_request_then_closes_it():
    with start_simulator(EXAMPLES, next_faults=("stall",), stall_s=0.3) as sim:
        started = time.perf_counter()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
            _ask(sim, cot_messages("equation", QUESTION))
        assert time.perf_counter() - started >= 0.3
        assert sim.stats()["by_status"] == {"stalled": 1}


def test_stats_and_reset_over_http(sim):
    _ask(sim, cot_messages("equation", QUESTION), n=2)
    root = sim.url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_stats") as response:
        stats = json.loads(response.read())
    assert stats["requests"] == 1 and stats["completions_served"] == 2 and stats["by_status"] == {"200": 1}
    assert "simulat" in stats["simulation"]
    _post(f"{root}/_reset", {})
    assert sim.stats()["requests"] == 0 and sim.stats()["served"] == {}


def test_auth_model_and_context_errors_look_like_openai():
    with start_simulator(EXAMPLES, api_key="sk-right", models=("simulated-teacher",), context_window=600) as sim:
        url = f"{sim.url}/chat/completions"
        body = {"model": "simulated-teacher", "messages": cot_messages("equation", QUESTION), "max_tokens": 100}
        status, _, reply = _post(url, body, {"Authorization": "Bearer sk-wrong"})
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        good = {"Authorization": "Bearer sk-right"}
        assert _post(url, {**body, "model": "gpt-9"}, good)[0] == 404
        status, _, reply = _post(url, {**body, "max_tokens": 500}, good)
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
        assert _post(url, body, good)[0] == 200


def test_serves_64_concurrent_connections_with_latency():
    with start_simulator(EXAMPLES, latency_ms=200) as sim:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(lambda _: _ask(sim, cot_messages("equation", QUESTION))[0], range(64)))
        elapsed = time.perf_counter() - started
        assert statuses == [200] * 64
        # One at a time would take 12.8 s; loose bounds, as 64 client threads share 2 cores here.
        assert sim.stats()["max_in_flight"] >= 16
        assert elapsed < 3.2


def test_answer_generation_takes_microseconds():
    teacher = SimulatedTeacher(EXAMPLES, "equation")
    body = json.dumps({"model": "m", "messages": cot_messages("equation", QUESTION), "n": 5}).encode()
    started = time.perf_counter()
    for _ in range(200):
        teacher.chat(body, None)
    assert (time.perf_counter() - started) / 200 < 0.002  # per request of 5 samples, HTTP aside


def test_deviation_ignore_n_answers_one_choice():
    with start_simulator(EXAMPLES, deviations=Deviations(ignore_n=True)) as sim:
        status, _, reply = _ask(sim, cot_messages("equation", QUESTION), n=3)
    assert status == 200 and len(reply["choices"]) == 1


def test_deviation_no_usage_leaves_usage_out():
    with start_simulator(EXAMPLES, deviations=Deviations(no_usage=True)) as sim:
        status, _, reply = _ask(sim, cot_messages("equation", QUESTION))
    assert status == 200 and "usage" not in reply


def test_deviation_no_retry_after_sends_429s_without_the_header():
    with start_simulator(EXAMPLES, rpm=60, burst=1, deviations=Deviations(no_retry_after=True)) as sim:
        assert _ask(sim, cot_messages("equation", QUESTION))[0] == 200
        status, headers, _ = _ask(sim, cot_messages("equation", QUESTION))
    assert status == 429 and "retry-after" not in headers and "retry-after-ms" not in headers


def test_deviation_content_filter_refuses_chosen_prompts_like_azure(sim):
    sim.set_deviations(content_filter=(QUESTION,))
    status, _, reply = _ask(sim, cot_messages("equation", QUESTION))
    assert status == 400 and reply["error"]["code"] == "content_filter"
    assert "content management policy" in reply["error"]["message"]
    assert _ask(sim, cot_messages("equation", PROBLEMS[0].question))[0] == 200
    assert sim.stats()["by_status"] == {"content_filter": 1, "200": 1}


def test_routes_can_be_added_for_other_endpoints(sim):
    from simulator.outcomes import Outcome
    from simulator.server import ROUTES, route

    @route("GET", "/v1/_test_echo")
    def echo(teacher, body, headers):
        return Outcome(200, {"examples": len(teacher.examples)})

    try:
        with urllib.request.urlopen(f"{sim.url}/_test_echo") as response:
            assert json.loads(response.read()) == {"examples": len(EXAMPLES)}
    finally:
        ROUTES.pop(("GET", "/v1/_test_echo")), ROUTES.pop(("GET", "/_test_echo"))
