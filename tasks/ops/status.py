"""What the store holds and what generation still lacks, for `mindsmirror status`."""

from __future__ import annotations

from storage import Store, queries
from tasks.config import Config
from tasks.data.datasets import answer_type, load_dataset
from tasks.generation.plan import plan_generation
from tasks.ops.calibration import calibration_counts, describe_calibration


def run_status(config: Config) -> dict:
    store = Store(config.store.path)
    rows = load_dataset(config.dataset)
    wanted = [row for row in rows if row.split in set(config.generate.splits)]
    plan = plan_generation(store, config, answer_type(config.dataset), wanted, remember_keys=False)
    report, not_stored, batches, calibration = store.read(lambda con: _counts(con, config, rows))
    report["missing"] = {
        "examples_not_stored": not_stored,
        "examples_with_missing_work": len(plan.work),
        "cot_requests": plan.cot_requests,
        "evaluation_requests": plan.eval_requests + plan.later_eval_requests,
        "estimated_cost_usd": round(plan.cost_usd, 4),
    }
    if config.teacher.mode == "batch" or batches:
        from tasks.generation.batch import batch_status  # the batch API's client: imported only when used

        report["batches"] = batch_status(store)
        report["missing"]["in open batches"] = len(queries.open_batch_keys(store))
        report["missing"]["committed_cost_usd"] = round(queries.committed_usd(store), 4)
    # The teacher's verdicts against gold: raw counts per teacher model and evaluation prompt version.
    report["calibration"] = calibration
    if config.teacher.simulate:
        report["calls"]["cost note"] = "simulated teacher: nothing is paid; priced as teacher.prices says"
    return report


def _counts(con, config: Config, rows) -> tuple[dict, int, bool, list[dict]]:
    """Every count status reads from the store, on one connection."""
    return (queries.status(con).as_dict(), len(queries.new_examples(con, rows)), bool(queries.latest_batches(con)),
            calibration_counts(con, answer_type(config.dataset)))


def describe_status(report: dict) -> str:
    lines = []
    for section, values in report.items():
        lines.append(f"{section}:")
        if section == "calibration":
            lines += describe_calibration(values)
        elif isinstance(values, dict):
            for name, value in values.items():
                lines.append(f"  {name}: {value}")
        else:
            lines.append(f"  {values}")
    return "\n".join(lines)
