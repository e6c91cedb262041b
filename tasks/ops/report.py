"""The results table of every trained arm: a compact table on the terminal, CSV and a PNG chart at the
store's root (report.csv, report.png: a folder's files, or objects in an object store), the
full-named table for Prefect artifacts."""

from __future__ import annotations

import csv
import io
import re
import statistics
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
# Only when some arm was scored with more than one seed of train.seeds: that arm's scores are the
# means over its seeds, beside the sample standard deviation of test accuracy and the seeds counted.
SEEDED = (("test accuracy std", "test:accuracy:std"), ("seeds", "seeds"))
TAIL = (("train accuracy", "train:accuracy"), ("n test", "n"), ("checkpoint", "checkpoint"))

# The terminal's headings: short enough that a report with every column fits 120 characters, with
# a legend under the table; accuracies and agreements there are percentages.
SHORT = {
    "test accuracy": "test", "validation accuracy": "val", "self-eval agreement (stage 1)": "agree1",
    "self-eval agreement (final)": "agree2", "test accuracy (self-consistency)": "SC",
    "passes/question (self-consistency)": "SC/q", "test accuracy (self-verify)": "SV",
    "passes/question (self-verify)": "SV/q", "teacher spend (US$)": "US$", "train accuracy": "train",
    "n test": "n", "seeds": "seeds",
}
LEGEND = ("In %: test/val: greedy accuracy on test / validation; agree1/agree2: self-evaluation agreement of "
          "the stage-1 / final student; SC, SV: test accuracy with self-consistency, self-verify; train: the "
          "teacher's own accuracy. SC/q, SV/q: passes per question; US$: teacher spend of the samples the arm "
          "trained on; checkpoint: s<stage>@<step>, under students/<arm>/.")
SEEDS_LEGEND = ("With several seeds, test is the mean ± sample standard deviation over the arm's seeds, the "
                "other scores are means, seeds is how many were scored and the checkpoint is the first seed's.")


@dataclass(frozen=True)
class Report:
    columns: tuple[str, ...]
    rows: list[tuple]
    markdown: str  # the compact terminal table and its legend
    csv_path: str | None  # a path, or a URL in the store's object store
    png_path: str | None
    title: str = ""  # what the chart shows: dataset, test problems, teacher
    png: bytes | None = None  # the chart, for the artifact that embeds it


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
    std = columns.index(SEEDED[0][0]) if SEEDED[0][0] in columns else None
    cells = [[SHORT.get(column, column) for column in columns if column != SEEDED[0][0]]]
    for row in rows:
        shown = []
        for column, value in zip(columns, row):
            if column == SEEDED[0][0]:
                continue
            if column == "test accuracy" and std is not None and row[std] is not None:
                shown.append(f"{_percent(value)} ± {_percent(row[std])}")
                continue
            if column == "checkpoint" and value and value.startswith(f"students/{row[0]}/"):
                value = _short_checkpoint(value[len(f"students/{row[0]}/"):])
            if column == SPEND[0] and value is not None:
                shown.append(f"{value:.4f}")
            else:
                shown.append(_percent(value) if isinstance(value, float) else _cell(value))
        cells.append(shown)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]

    def line(values):
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    legend = LEGEND + (" " + SEEDS_LEGEND if std is not None else "")
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:]), "", *textwrap.wrap(legend, 120)])


def results_table(store: Store, spends: dict[str, float] | None = None,
                  seeds: dict[str, list[str]] | None = None) -> tuple[tuple[str, ...], list[tuple]]:
    """The columns and one row per arm (baselines first): the latest value of each metric. Train
    accuracy is the teacher's, on its own stored chains of thought; checkpoints are shown relative
    to the store; passes/question is the inference cost of a decode mode (greedy: 1); `spends` is
    each arm's teacher spend (tasks.ops.spend), shown when some arm's is above zero; `seeds` names
    each arm's runs of train.seeds (tasks.student.arms.seeded_name), pooled into the arm's row."""
    folder = store.local_folder()
    table: dict[str, dict[str, object]] = {}
    for result in queries.latest_results(store):
        checkpoint = result.checkpoint
        if folder is not None and checkpoint.startswith(str(folder)):
            checkpoint = str(Path(checkpoint).relative_to(folder))
        elif folder is None and checkpoint.startswith(f"{store.location.url}/"):  # a checkpoint in the bucket
            checkpoint = checkpoint[len(store.location.url) + 1:]
        row = table.setdefault(result.arm, {})
        value = int(result.value) if result.metric.startswith("passes:") else result.value
        row[f"{result.split}:{result.metric}"] = value
        # The arm's checkpoint is the one scored on test (self-evaluation agreement has its own).
        if result.split == "test" and result.metric == "accuracy":
            row["n"], row["checkpoint"] = result.n, checkpoint
    _pool_seeds(table, seeds or {})
    if any(usd > 0 for usd in (spends or {}).values()):  # gold-only runs bought nothing: no column
        for arm, usd in spends.items():
            if arm in table:
                table[arm][SPEND[1]] = usd
    present = {key for row in table.values() for key in row}
    several = any(row.get(SEEDED[1][1], 1) > 1 for row in table.values())
    shown = [BASE[0], *(SEEDED if several else ()), *BASE[1:],
             *(column for column in (*OPTIONAL, SPEND) if column[1] in present), *TAIL]
    ordered = sorted(table, key=lambda arm: (not arm.startswith(("baseline", "teacher")), arm))
    columns = ("arm", *(name for name, _ in shown))
    return columns, [(arm, *(table[arm].get(key) for _, key in shown)) for arm in ordered]


def _pool_seeds(table: dict[str, dict[str, object]], seeds: dict[str, list[str]]) -> None:
    """Replace the rows of each arm's seeds by one row: the mean of each score over them, the
    standard deviation of test accuracy and how many seeds were scored. Rows of seeds no longer in
    the config (named <arm>/seed-<n>) are left out."""
    runs = {arm: [table.pop(name) for name in names if name in table] for arm, names in seeds.items()}
    for name in [name for name in table if re.search(r"/seed-\d+$", name)]:
        del table[name]
    for arm, scored in runs.items():
        if not scored:
            continue
        row = dict(scored[0])  # n test and checkpoint: the first seed's
        for key, value in scored[0].items():
            if isinstance(value, float):
                row[key] = statistics.fmean(run[key] for run in scored if isinstance(run.get(key), float))
        accuracies = [run["test:accuracy"] for run in scored if run.get("test:accuracy") is not None]
        row[SEEDED[0][1]] = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        row[SEEDED[1][1]] = len(accuracies)
        table[arm] = row


def chart_title(config: Config, rows: list[tuple], columns: Sequence[str]) -> str:
    """What the chart shows: dataset, test problems scored and the teacher."""
    n = {row[columns.index("n test")] for row in rows if row[columns.index("n test")] is not None}
    teacher = "simulated teacher" if config.teacher.simulate else f"teacher {config.teacher.model}"
    return (f"{config.dataset.name}: test accuracy per arm "
            f"(n = {', '.join(str(value) for value in sorted(n)) or '?'} test problems, {teacher})")


def _png(rows: list[tuple], columns: Sequence[str], title: str) -> bytes:
    """Test accuracy per arm; beside it, when arms have a teacher spend, accuracy against dollars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = columns.index(SEEDED[0][0]) if SEEDED[0][0] in columns else None
    scored = [(row[0], row[1]) for row in rows if row[1] is not None]
    errors = [100 * (row[std] or 0) if std is not None else 0 for row in rows if row[1] is not None]
    spend = columns.index(SPEND[0]) if SPEND[0] in columns else None
    priced = [(row[0], row[spend], row[1]) for row in rows if spend is not None and row[spend] is not None
              and row[1] is not None]
    width = max(5.5, 1.3 * len(scored))
    figure, panels = plt.subplots(1, 2 if priced else 1, figsize=(width + (4.5 if priced else 0), 3.6),
                                  squeeze=False, gridspec_kw={"width_ratios": [width, 4.5] if priced else [1]})
    axes = panels[0][0]
    bars = axes.bar([arm for arm, _ in scored], [100 * value for _, value in scored], color="#4477aa",
                    yerr=errors if std is not None else None, capsize=4)
    axes.bar_label(bars, fmt="%.1f")  # at the top of the error bar where there is one
    axes.set_ylabel("test accuracy (%)" + (" (mean ± std over seeds)" if std is not None else ""))
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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    return image.getvalue()


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


def _seed_runs(config: Config) -> dict[str, list[str]]:
    from tasks.student.arms import seeded_name

    return {arm.name: [seeded_name(config, arm.name, seed) for seed in config.train.seed_list()]
            for arm in config.train.arms}


def write_report(config: Config) -> Report:
    store = Store(config.store.path)
    columns, rows = results_table(store, _spends(config), _seed_runs(config))
    if not rows:
        return Report(columns, rows, "no results yet: run `mindsmirror evaluate CONFIG` first", None, None)
    markdown = terminal_table(columns, rows) + _calibration_block(config, store)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    title = chart_title(config, rows, columns)
    png = _png(rows, columns, title)
    csv_path = _put(store, "report.csv", buffer.getvalue().encode("utf-8"))
    return Report(columns, rows, markdown, csv_path, _put(store, "report.png", png), title, png)


def _put(store: Store, name: str, data: bytes) -> str:
    """Write a file at the store's root (a folder, or one object in an object store): its path or URL."""
    folder = store.local_folder()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return str(folder / name)
    location = store.location
    location.fsspec_filesystem.pipe_file(f"{location.path}/{name}", data)
    return f"{location.url}/{name}"
