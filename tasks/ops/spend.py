"""What each arm's training data cost: the teacher spend of the samples it trained on."""

from __future__ import annotations

from dataclasses import dataclass

from storage import Store, queries
from tasks.config import Config
from tasks.data.datasets import answer_type
from tasks.data.trainsets import arm_sample_keys, provenances


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
    and samples bought but left out (cot_filter, n_evals, validation) are not counted."""
    store = Store(config.store.path)
    sources, kind = provenances(config, store), answer_type(config.dataset)
    spends = []
    for arm in config.train.arms:
        cots, evaluations = arm_sample_keys(store, arm, sources, kind)
        spends.append(ArmSpend(arm.name, queries.spent_on(store, cots | evaluations), len(cots), len(evaluations)))
    return spends
