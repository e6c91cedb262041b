"""What a generation run has spent and done: the budget checked before each dispatch, the summary."""

from __future__ import annotations

from dataclasses import dataclass, field

# What a simulated run's messages add: its dollar figures are what the tokens would cost.
SIMULATED_NOTE = " (simulated teacher: nothing is paid; priced as teacher.prices says, to try budgets)"


class BudgetExceeded(Exception):
    """Dispatching the next request could take spending past teacher.max_cost_usd."""


@dataclass
class Summary:
    requests_ok: int = 0
    requests_failed: int = 0
    requests_skipped: int = 0  # claimed by another run at the same moment
    cots: int = 0
    evaluations: int = 0
    unparseable: int = 0
    refused: int = 0  # samples refused by the endpoint's content filter (stored with the reason)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_calls: int = 0  # calls whose token counts are estimates (the server sent no usage)
    cost_usd: float = 0.0
    abandoned: int = 0  # attempts sent and timed out: possibly billed
    possibly_billed_usd: float = 0.0  # their estimated cost, counted against the budget
    pending: int = 0  # answers received but not in the store (journalled after a failed write)
    journal: str | None = None  # where those pending answers are
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)

    def tokens_note(self) -> str:
        if not self.estimated_calls:
            return ""
        calls = f"{self.estimated_calls} call" + ("s" if self.estimated_calls != 1 else "")
        return f"; the token counts of {calls} are estimates (the server sent no usage), and so is the cost"

    def describe(self, simulated: bool = False) -> str:
        return (
            f"{self.requests_ok} requests: {self.cots} chains of thought, {self.evaluations} "
            f"self-evaluations ({self.unparseable} unparseable, kept with their reason); "
            f"{self.prompt_tokens + self.completion_tokens:,} tokens, ${self.cost_usd:.4f}"
            + (f"; {self.refused} refused by the content filter, kept with the reason" if self.refused else "")
            + (f"; {self.abandoned} timed-out attempts possibly billed (about ${self.possibly_billed_usd:.4f}, "
               "counted against the budget)" if self.abandoned else "")
            + self.tokens_note() + (SIMULATED_NOTE if simulated else "")
        )


class Budget:
    """Spending so far plus what in-flight requests could cost, checked before each dispatch."""

    def __init__(self, limit: float | None, spent: float):
        self.limit = limit
        self.spent_before = spent
        self.spent = spent
        self.reserved = 0.0
        self.exceeded = False

    def reserve(self, amount: float) -> None:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit:
            self.exceeded = True
            raise BudgetExceeded(self.message(amount))
        self.reserved += amount

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual

    def message(self, next_cost: float | None = None, note: str = "") -> str:
        """What was really spent: read when the run ends, after in-flight requests have settled."""
        upcoming = f"; the next request could cost up to ${next_cost:.4f}" if next_cost is not None else ""
        return (
            f"budget cap reached: ${self.spent:.4f} spent of teacher.max_cost_usd=${self.limit:.4f} "
            f"(${self.spent - self.spent_before:.4f} by this run{upcoming}){note}; raise the cap and rerun "
            "to continue"
        )
