"""Planning generation: which teacher samples the store lacks, as requests with their costs.

The plan is computed from the store (wanted sample keys anti-joined against stored keys), so a
rerun after any crash asks only for what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from storage import CotRow, ExampleRow, Store, keycache, queries
from tasks.config import Config, TeacherConfig
from tasks.data.datasets import answer_type, load_dataset
from tasks.generation.ledger import SIMULATED_NOTE
from tasks.teacher.keys import SIMULATED_ENDPOINT, Sampling, endpoint_identity, sample_keys
from tasks.teacher.prompts import cot_messages, eval_messages, prompt_version
from tasks.teacher.tokens import estimate_tokens


@dataclass(frozen=True)
class Request:
    kind: str  # cot | evaluation
    example_id: str
    question: str
    messages: list[dict]
    indices: tuple[int, ...]
    keys: tuple[str, ...]
    cot: CotRow | None = None  # the chain of thought being judged


@dataclass(frozen=True)
class ExampleWork:
    example: ExampleRow
    cot_request: Request | None
    eval_requests: tuple[Request, ...]  # for chains of thought already stored


@dataclass(frozen=True)
class Plan:
    work: tuple[ExampleWork, ...]
    cot_requests: int
    eval_requests: int  # for chains of thought already stored
    later_eval_requests: int  # for the chains of thought this plan will buy
    prompt_tokens: int  # estimated
    completion_tokens: int  # upper bound: n * max_tokens
    cost_usd: float  # upper bound at the configured prices
    progress_total: int = 0  # requests one per prompt, as the progress bar counts them

    @property
    def total_requests(self) -> int:
        """HTTP requests (n of them per prompt when teacher.use_n is off)."""
        return self.cot_requests + self.eval_requests + self.later_eval_requests

    def batches(self, size: int) -> Iterator[tuple[ExampleWork, ...]]:
        for start in range(0, len(self.work), size):
            yield self.work[start : start + size]

    def describe(self, simulated: bool = False) -> str:
        return (
            f"planned {self.total_requests} teacher requests ({self.cot_requests} for chains of thought, "
            f"{self.eval_requests + self.later_eval_requests} for self-evaluations), about "
            f"{self.prompt_tokens:,} prompt tokens and at most {self.completion_tokens:,} completion tokens, "
            f"at most ${self.cost_usd:.4f}" + (SIMULATED_NOTE if simulated else "")
        )



def price_usd(teacher: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float:
    price = teacher.prices.get(teacher.model)
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def endpoint_of(teacher: TeacherConfig) -> str:
    if teacher.simulate:
        return SIMULATED_ENDPOINT
    return endpoint_identity(teacher.base_url or os.environ.get("OPENAI_BASE_URL"))


def sampling_of(teacher: TeacherConfig, kind: str) -> Sampling:
    max_tokens = teacher.max_tokens if kind == "cot" else teacher.eval_max_tokens
    return Sampling(teacher.temperature, teacher.top_p, max_tokens)


def request_for(
    teacher: TeacherConfig, answer_type: str, kind: str, example: ExampleRow, cot: CotRow | None, wanted: int
) -> tuple[Request, dict[str, int]]:
    """The request for all `wanted` samples of one prompt, and each sample key's index."""
    if kind == "cot":
        messages = cot_messages(answer_type, example.input)
    else:
        messages = eval_messages(answer_type, example.input, cot.rationale or cot.text)
    version = prompt_version(answer_type, kind)
    endpoint = endpoint_of(teacher)
    sampling = sampling_of(teacher, kind)
    derived = sample_keys(endpoint=endpoint, model=teacher.model, prompt_version=version, messages=messages,
                          sampling=sampling, indices=range(wanted), judged=cot.key if cot is not None else None)
    keys = {key: i for i, key in enumerate(derived)}
    request = Request(kind, example.example_id, example.input, messages, tuple(keys.values()), tuple(keys), cot)
    return request, keys


def narrow(request: Request, missing: set[str]) -> Request | None:
    pairs = [(i, k) for i, k in zip(request.indices, request.keys) if k in missing]
    if not pairs:
        return None
    indices, keys = zip(*pairs)
    return Request(request.kind, request.example_id, request.question, request.messages, indices, keys, request.cot)


def plan_generation(
    store: Store, config: Config, answer_type: str, examples: Sequence[ExampleRow], only_failed: bool = False,
    remember_keys: bool = True,
) -> Plan:
    """What to ask the teacher: every wanted sample whose key the store does not hold.

    Keys are derived in Python only for examples and CoTs the key cache (storage.keycache) lacks;
    the rest is anti-joined in DuckDB on one connection, so a plan costs what changed since the last one.
    With only_failed, just the samples of requests recorded as failed (and evaluations of their CoTs).
    remember_keys: keep the keys derived here in the key cache (a dry run and status write nothing).
    The examples a plan of `generate` finds nothing for are remembered (keycache.settle): while the
    store's parts stay as they were, the next plan reads tables only for the examples not settled
    (new or changed ones), and none when every example is settled.
    """
    ids = key_identities(config.teacher, answer_type)
    teacher = config.teacher
    hashes = {example.example_id: keycache.input_hash(example.input) for example in examples}
    listing = None if only_failed else keycache.part_listing(store, ids)
    state = None if only_failed else keycache.plan_state(ids, teacher.n_cots, teacher.n_evals, listing)
    settled = keycache.settled_examples(store, state) if state is not None else {}
    examples = [example for example in examples if settled.get(example.example_id) != hashes[example.example_id]]
    if not examples:
        return estimate(teacher, ())
    wanted = keycache.wanted_rows((example.example_id, hashes[example.example_id]) for example in examples)

    def work(con) -> Plan:
        keycache.attach(con, store, ids)
        return _plan(con, store, ids, teacher, answer_type, examples, wanted, only_failed, remember_keys)

    plan = store.read(work)
    # Settled only if nothing was written meanwhile (this plan's own kept keys included: the next plan settles).
    if remember_keys and state is not None and not plan.work and keycache.part_listing(store, ids) == listing:
        keycache.settle(store, state, {**settled, **{example.example_id: hashes[example.example_id]
                                                     for example in examples}})
    return plan


def _plan(con, store: Store, ids: keycache.Identities, teacher: TeacherConfig, answer_type: str,
          examples: Sequence[ExampleRow], wanted, only_failed: bool, remember_keys: bool) -> Plan:
    failed = queries.failed_keys(con) if only_failed else None
    by_id = {example.example_id: example for example in examples}
    uncached = keycache.uncached_examples(con, wanted, teacher.n_cots)
    cot_requests = wanted_cots(teacher, answer_type, [by_id[example_id] for example_id in uncached])
    derived = keycache.cot_rows((r.example_id, keycache.input_hash(r.question), i, k)
                                for r in cot_requests.values() for i, k in zip(r.indices, r.keys))
    if remember_keys:
        keycache.remember(store, "cots", ids.cots, derived)
    missing_cots = keycache.missing_cots(con, wanted, teacher.n_cots, derived)
    if failed is not None:
        missing_cots = {key: example_id for key, example_id in missing_cots.items() if key in failed}
    evals = evaluation_requests(con, store, ids, teacher, answer_type, by_id, (wanted, derived), failed,
                                remember_keys)
    asking = set(missing_cots.values())
    new = [by_id[example_id] for example_id in asking - set(cot_requests)]
    cot_requests.update(wanted_cots(teacher, answer_type, new))
    missing_keys = set(missing_cots)
    work = []
    for example in examples:
        asked = example.example_id in asking
        cot_request = narrow(cot_requests[example.example_id], missing_keys) if asked else None
        eval_requests = tuple(evals.get(example.example_id, ()))
        if cot_request is not None or eval_requests:
            work.append(ExampleWork(example, cot_request, eval_requests))
    return estimate(teacher, tuple(work))


def key_identities(teacher: TeacherConfig, answer_type: str) -> keycache.Identities:
    """Everything a CoT key hashes besides the question and the index, and everything an evaluation
    key hashes besides the judged CoT and the index: they name the key cache's folders."""
    names = []
    for kind, template in (("cot", cot_messages(answer_type, "{question}")),
                           ("evaluation", eval_messages(answer_type, "{question}", "{cot}"))):
        sampling = sampling_of(teacher, kind)
        identity = [endpoint_of(teacher), teacher.model, prompt_version(answer_type, kind), template,
                    sampling.temperature, sampling.top_p, sampling.max_tokens]
        names.append(hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16])
    return keycache.Identities(*names)


def evaluation_requests(con, store: Store, ids: keycache.Identities, teacher: TeacherConfig, answer_type: str,
                        by_id: dict[str, ExampleRow], cots: tuple, failed: set[str] | None,
                        remember: bool) -> dict[str, list[Request]]:
    """The evaluation requests, narrowed to their missing keys, for the wanted CoTs that are stored
    and parseable, by example id. `cots`: the wanted examples and the CoT keys derived this plan
    (keycache tables). Keys are derived only for CoTs whose evaluation keys the cache lacks."""
    if not teacher.n_evals:
        return {}
    wanted, cot_extra = cots
    lacking, unjudged = keycache.judged_evaluations(con, wanted, teacher.n_cots, teacher.n_evals, cot_extra)
    new = queries.cots_by_keys(con, unjudged) if unjudged else []
    derived = [r for requests in wanted_evaluations(teacher, answer_type, by_id, new).values() for r in requests]
    if remember:
        keycache.remember(store, "evaluations", ids.evaluations,
                          keycache.eval_rows((r.cot.key, i, k) for r in derived for i, k in zip(r.indices, r.keys)))
    judging = {key: r.cot.key for r in derived for key in r.keys}
    lacking.update((key, judging[key]) for key in queries.missing_keys(con, "evaluations", list(judging)))
    if failed is not None:
        lacking = {key: cot for key, cot in lacking.items() if key in failed}
    needing = set(lacking.values())
    known = {cot.key: cot for cot in new}
    others = sorted(needing - set(known))
    stored = [known[key] for key in needing if key in known] + (queries.cots_by_keys(con, others) if others else [])
    stored.sort(key=lambda cot: (cot.example_id, cot.cot_index, cot.key))
    requests: dict[str, list[Request]] = {}
    for example_id, asked in wanted_evaluations(teacher, answer_type, by_id, stored).items():
        requests[example_id] = [r for request in asked if (r := narrow(request, lacking)) is not None]
    return requests


def wanted_cots(teacher: TeacherConfig, answer_type: str, examples: Sequence[ExampleRow]) -> dict[str, Request]:
    """Each example's request for all teacher.n_cots chains of thought, by example id."""
    return {example.example_id: request_for(teacher, answer_type, "cot", example, None, teacher.n_cots)[0]
            for example in examples}


def wanted_evaluations(teacher: TeacherConfig, answer_type: str, by_id: dict[str, ExampleRow],
                       stored: Sequence[CotRow]) -> dict[str, list[Request]]:
    """The evaluation requests for the stored CoTs, by example id; an unparseable CoT has nothing to judge
    (such rows are never trained on)."""
    if not teacher.n_evals:
        return {}
    requests: dict[str, list[Request]] = {}
    for cot in stored:
        if cot.parse_error is None:
            request, _ = request_for(teacher, answer_type, "evaluation", by_id[cot.example_id], cot, teacher.n_evals)
            requests.setdefault(cot.example_id, []).append(request)
    return requests


def estimate(teacher: TeacherConfig, work: tuple[ExampleWork, ...]) -> Plan:
    """The plan's requests, tokens and cost: HTTP requests (n per prompt without `n`), prompt tokens
    estimated from characters, completion tokens and cost as upper bounds (n * max_tokens)."""
    cot_calls = eval_calls = new_cots = prompts = prompt_tokens = completion_tokens = 0
    for item in work:
        requests = ([item.cot_request] if item.cot_request else []) + list(item.eval_requests)
        prompts += len(requests)
        for request in requests:
            calls = 1 if teacher.use_n else len(request.keys)
            prompt_tokens += calls * estimate_tokens(request.messages, 0, 0)
            completion_tokens += len(request.keys) * sampling_of(teacher, request.kind).max_tokens
            if request.kind == "cot":
                cot_calls += calls
                new_cots += len(request.keys)
            else:
                eval_calls += calls
    # Each new chain of thought will need its own evaluation request: count those in the estimate,
    # sized like the CoT prompt plus the CoT itself.
    eval_calls_per_cot = (1 if teacher.use_n else teacher.n_evals) if teacher.n_evals else 0
    if new_cots and eval_calls_per_cot:
        average_prompt = prompt_tokens / max(1, cot_calls + eval_calls)
        prompt_tokens += int(new_cots * eval_calls_per_cot * (average_prompt + teacher.max_tokens))
        completion_tokens += new_cots * teacher.n_evals * teacher.eval_max_tokens
    return Plan(
        work=work, cot_requests=cot_calls, eval_requests=eval_calls, later_eval_requests=new_cots * eval_calls_per_cot,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=price_usd(teacher, prompt_tokens, completion_tokens),
        progress_total=prompts + (new_cots if teacher.n_evals else 0),
    )


def sync_examples(store: Store, config: Config, write: bool = True) -> tuple[list[ExampleRow], str]:
    """Load and validate the dataset (before any money is spent), store examples not yet stored,
    and return those of the splits to generate for, with the dataset's answer type.

    An example keeps the split it was first stored with, so a grown dataset never moves a stored
    example between train and validation. With write=False (a dry run) nothing is stored: the new
    examples are returned as they would be stored.
    """
    rows = load_dataset(config.dataset)
    new = queries.new_examples(store, rows)
    if write:
        store.append(new)
    loaded = {row.example_id for row in rows}
    splits = config.generate.splits
    stored = [row for row in queries.examples(store, splits) if row.example_id in loaded]
    if not write:
        stored = sorted(stored + [row for row in new if row.split in splits], key=lambda row: (row.split, row.example_id))
    return stored, answer_type(config.dataset)


def dry_run_plan(config: Config) -> tuple[str, Plan]:
    """What `generate` would buy now, described, and its plan; writes nothing (no examples, no kept
    keys) and needs no Prefect run."""
    store = Store(config.store.path)
    examples, kind = sync_examples(store, config, write=False)
    work = plan_generation(store, config, kind, examples, remember_keys=False)
    if config.teacher.mode != "batch":
        return work.describe(config.teacher.simulate), work
    from tasks.generation.batch import at_batch_prices  # the batch API's client: imported only when used

    work = at_batch_prices(work, config.teacher)
    return "batch mode: " + work.describe(config.teacher.simulate), work
