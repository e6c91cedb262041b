"""What each arm's training data cost: the teacher spend of the samples it trained on."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import pyarrow as pa

from storage import Store, derived, queries
from storage.queries import Provenance
from tasks.config import ArmConfig, Config
from tasks.data.datasets import answer_type
from tasks.data.trainsets import arm_sample_keys, provenances, rows_state

SPEND_KIND = "arm-spend"  # storage.derived: an arm's ArmSpend


@dataclass(frozen=True)
class ArmSpend:
    arm: str
    usd: float  # the share of each teacher request's cost that paid for these samples
    cots: int  # teacher CoTs it trains on, in either stage
    evaluations: int  # self-evaluations it trains on (stage 1)


def arm_spends(config: Config) -> list[ArmSpend]:
    """Per arm of the config, in its order: the teacher spend (from `calls`) of the train samples it
    trains on. A request that brought several samples is shared evenly among them, so an arm that
    uses 2 of a CoT's 5 self-evaluations pays 2/5 of that request; imported samples cost nothing,
    and samples bought but left out (cot_filter, n_evals, validation) are not counted. Each arm's
    spend is remembered (storage.derived) while the parts of its rows and of `calls` stay as they were."""
    store = Store(config.store.path)
    sources, kind = None, answer_type(config.dataset)
    calls = derived.part_listing(store, ("calls",))
    spends = []
    for arm in config.train.arms:
        name = derived.name_of(rows_state(config, store, arm).name, calls)
        if (kept := derived.recall(store, SPEND_KIND, name)) is not None:
            spends.append(ArmSpend(**kept))
            continue
        sources = sources or provenances(config, store)
        spends.append(store.read(functools.partial(_spend, arm=arm, sources=sources, kind=kind)))
        derived.remember(store, SPEND_KIND, name, dataclasses.asdict(spends[-1]))
    return spends


def _spend(con: queries.Source, arm: ArmConfig, sources: list[Provenance], kind: str) -> ArmSpend:
    """An arm's spend, its sample keys and their prices read on one connection."""
    cots, evaluations = arm_sample_keys(con, arm, sources, kind)
    usd = queries.spent_on(con, pa.concat_arrays([cots, evaluations]))
    return ArmSpend(arm.name, usd, len(cots), len(evaluations))
