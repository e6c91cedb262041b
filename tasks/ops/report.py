"""The results table of every trained arm: a compact table on the terminal, CSV and a PNG chart beside
the store, the full-named table for Prefect artifacts."""

from __future__ import annotations

import csv
import io
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storage import Store, queries
from tasks.config import Config

# (column, metric key); the sampling decode modes and the final student's agreement get columns
# only when some arm has them, so a greedy-only run shows the paper's table.
BASE = (
    ("test accuracy", "test:accuracy"),
    ("validation accuracy", "validation:accuracy"),
    ("self-eval agreement (stage 1)", "validation:self_eval_agreement"),
)
OPTIONAL = (
    ("self-eval agreement (final)", "validation:self_eval_agreement_final"),
    ("test accuracy (self-consistency)", "test:accuracy:self_consistency"),
    ("passes/question (self-consistency)", "test:passes:self_consistency"),
    ("test accuracy (self-verify)", "test:accuracy:self_verify"),
    ("passes/question (self-verify)", "test:passes:self_verify"),
)
SPEND = ("teacher spend (US$)", "spend")  # only when some arm trained on bought samples
TAIL = (("train accuracy", "train:accuracy"), ("n test", "n"), ("checkpoint", "checkpoint"))

# The terminal's headings: short enough that a report with every column fits 120 characters, with
# a legend under the table; accuracies and agreements there are percentages.
SHORT = {
    "test accuracy": "test", "validation accuracy": "val", "self-eval agreement (stage 1)": "agree1",
    "self-eval agreement (final)": "agree2", "test accuracy (self-consistency)": "SC",
    "passes/question (self-consistency)": "SC/q", "test accuracy (self-verify)": "SV",
    "passes/question (self-verify)": "SV/q", "teacher spend (US$)": "US$", "train accuracy": "train",
    "n test": "n",
}
LEGEND = ("In %: test/val: greedy accuracy on test / validation; agree1/agree2: self-evaluation agreement of "
          "the stage-1 / final student; SC, SV: test accuracy with self-consistency, self-verify; train: the "
          "teacher's own accuracy. SC/q, SV/q: passes per question; US$: teacher spend of the samples the arm "
          "trained on; checkpoint: s<stage>@<step>, under students/<arm>/.")


@dataclass(frozen=True)
class Report:
    columns: tuple[str, ...]
    rows: list[tuple]
    markdown: str  # the compact terminal table and its legend
    csv_path: str | None
    png_path: str | None
    title: str = ""  # what the chart shows: dataset, test problems, teacher


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _short_checkpoint(path: str) -> str:
    """stage2/step-000700 -> s2@700: the terminal's width goes to the numbers."""
    match = re.fullmatch(r"stage(\d+)/step-0*(\d+)", path)
    return f"s{match.group(1)}@{match.group(2)}" if match else path


def terminal_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The report for a terminal: a padded markdown table with short headings, accuracies in percent
    and checkpoints relative to their arm's folder, then a legend."""
    cells = [[SHORT.get(column, column) for column in columns]]
    for row in rows:
        shown = []
        for column, value in zip(columns, row):
            if column == "checkpoint" and value and value.startswith(f"students/{row[0]}/"):
                value = _short_checkpoint(value[len(f"students/{row[0]}/"):])
            if column == SPEND[0] and value is not None:
                shown.append(f"{value:.4f}")
            else:
                shown.append(_percent(value) if isinstance(value, float) else _cell(value))
        cells.append(shown)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def line(values):
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:]), "", *textwrap.wrap(LEGEND, 120)])


def results_table(store: Store, spends: dict[str, float] | None = None) -> tuple[tuple[str, ...], list[tuple]]:
    """The columns and one row per arm (baselines first): the latest value of each metric. Train
    accuracy is the teacher's, on its own stored chains of thought; checkpoints are shown relative
    to the store; passes/question is the inference cost of a decode mode (greedy: 1); `spends` is
    each arm's teacher spend (tasks.ops.spend), shown when some arm's is above zero."""
    folder = store.local_folder()
    table: dict[str, dict[str, object]] = {}
    for result in queries.latest_results(store):
        checkpoint = result.checkpoint
        if folder is not None and checkpoint.startswith(str(folder)):
            checkpoint = str(Path(checkpoint).relative_to(folder))
        row = table.setdefault(result.arm, {})
        value = int(result.value) if result.metric.startswith("passes:") else result.value
        row[f"{result.split}:{result.metric}"] = value
        # The arm's checkpoint is the one scored on test (self-evaluation agreement has its own).
        if result.split == "test" and result.metric == "accuracy":
            row["n"], row["checkpoint"] = result.n, checkpoint
    if any(usd > 0 for usd in (spends or {}).values()):  # gold-only runs bought nothing: no column
        for arm, usd in spends.items():
            if arm in table:
                table[arm][SPEND[1]] = usd
    present = {key for row in table.values() for key in row}
    shown = [*BASE, *(column for column in (*OPTIONAL, SPEND) if column[1] in present), *TAIL]
    ordered = sorted(table, key=lambda arm: (not arm.startswith(("baseline", "teacher")), arm))
    columns = ("arm", *(name for name, _ in shown))
    return columns, [(arm, *(table[arm].get(key) for _, key in shown)) for arm in ordered]


def chart_title(config: Config, rows: list[tuple], columns: Sequence[str]) -> str:
    """What the chart shows: dataset, test problems scored and the teacher."""
    n = {row[columns.index("n test")] for row in rows if row[columns.index("n test")] is not None}
    teacher = "simulated teacher" if config.teacher.simulate else f"teacher {config.teacher.model}"
    return (f"{config.dataset.name}: test accuracy per arm "
            f"(n = {', '.join(str(value) for value in sorted(n)) or '?'} test problems, {teacher})")


def _write_png(rows: list[tuple], columns: Sequence[str], path: Path, title: str) -> None:
    """Test accuracy per arm; beside it, when arms have a teacher spend, accuracy against dollars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(row[0], row[1]) for row in rows if row[1] is not None]
    spend = columns.index(SPEND[0]) if SPEND[0] in columns else None
    priced = [(row[0], row[spend], row[1]) for row in rows if spend is not None and row[spend] is not None
              and row[1] is not None]
    width = max(5.5, 1.3 * len(scored))
    figure, panels = plt.subplots(1, 2 if priced else 1, figsize=(width + (4.5 if priced else 0), 3.6),
                                  squeeze=False, gridspec_kw={"width_ratios": [width, 4.5] if priced else [1]})
    axes = panels[0][0]
    bars = axes.bar([arm for arm, _ in scored], [100 * value for _, value in scored], color="#4477aa")
    axes.bar_label(bars, fmt="%.1f")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(0, 105)
    axes.tick_params(axis="x", labelrotation=20)
    if priced:
        cost = panels[0][1]
        cost.scatter([usd for _, usd, _ in priced], [100 * value for _, _, value in priced], color="#cc6677")
        for arm, usd, value in priced:
            cost.annotate(arm, (usd, 100 * value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        cost.set_xlabel("teacher spend of the training samples (US$)")
        cost.set_ylabel("test accuracy (%)")
        cost.set_ylim(0, 105)
        cost.set_xlim(0, 1.3 * max(usd for _, usd, _ in priced))  # room for the labels
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _spends(config: Config) -> dict[str, float]:
    """Each arm's teacher spend; an arm whose training rows are gone from the store has none."""
    from tasks.ops.spend import arm_spends

    try:
        return {spend.arm: spend.usd for spend in arm_spends(config)}
    except ValueError:
        return {}


def _calibration_block(config: Config, store: Store) -> str:
    """How often the teacher's own verdicts were right, under the table (nothing without verdicts)."""
    from tasks.data.datasets import answer_type
    from tasks.ops.calibration import calibration_counts, describe_calibration

    counts = calibration_counts(store, answer_type(config.dataset))
    if not counts:
        return ""
    return "\n\nThe teacher's self-evaluations against gold:\n" + "\n".join(describe_calibration(counts))


def write_report(config: Config) -> Report:
    store = Store(config.store.path)
    columns, rows = results_table(store, _spends(config))
    if not rows:
        return Report(columns, rows, "no results yet: run `mindsmirror evaluate CONFIG` first", None, None)
    markdown = terminal_table(columns, rows) + _calibration_block(config, store)
    folder = store.local_folder()
    if folder is None:
        return Report(columns, rows, markdown, None, None)
    csv_path, png_path = folder / "report.csv", folder / "report.png"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    csv_path.write_text(buffer.getvalue(), encoding="utf-8")
    title = chart_title(config, rows, columns)
    _write_png(rows, columns, png_path, title)
    return Report(columns, rows, markdown, str(csv_path), str(png_path), title)
