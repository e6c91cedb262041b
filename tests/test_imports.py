"""Imports run one way: flows -> tasks -> storage, and the simulator (a test double shipped beside
the product) depends on the teacher boundary, never the other way round."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, cot_row, evaluation_row

from storage import ExampleRow, Store

PACKAGES = ("flows", "tasks", "storage", "simulator")
# What the simulator may use: the teacher boundary, answer scoring, the config tree, and the
# built-in problems it answers by default.
SIMULATOR_MAY_IMPORT = ("tasks.teacher", "tasks.answers", "tasks.config", "tasks.data.arithmetic")


def imports_of(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """Each module of `package` (a dotted name) -> the first-party modules it imports, lazily or not."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[module] = {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def violations(package: str, allowed, root: Path = REPO) -> list[str]:
    return [f"{module} imports {name}" for module, names in imports_of(package, root).items()
            for name in sorted(names) if not allowed(name)]


def _within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_storage_imports_nothing_of_tasks_flows_or_the_simulator():
    assert violations("storage", lambda name: _within(name, ("storage",))) == []


def test_tasks_import_storage_and_tasks_only_never_flows_or_the_simulator():
    assert violations("tasks", lambda name: _within(name, ("tasks", "storage"))) == []


def test_the_teacher_boundary_knows_no_store_and_no_other_stage():
    allowed = ("tasks.teacher", "tasks.answers", "tasks.config", "tasks.lazy")  # lazy: names on first use, no stage
    assert violations("tasks/teacher", lambda name: _within(name, allowed)) == []


def test_the_simulator_depends_on_the_teacher_boundary_only():
    assert violations("simulator", lambda name: _within(name, ("simulator", *SIMULATOR_MAY_IMPORT))) == []


def test_flows_are_the_top_nothing_imports_them():
    for package in ("tasks", "storage", "simulator"):
        assert violations(package, lambda name: not _within(name, ("flows",))) == []


def test_the_check_sees_an_import_running_the_wrong_way_even_inside_a_function(tmp_path):
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "bad.py").write_text("def f():\n    from tasks.config import Config\n")
    found = violations("storage", lambda name: _within(name, ("storage",)), tmp_path)
    assert found == ["storage.bad imports tasks.config"]


def test_planning_status_and_training_sets_never_load_the_openai_sdk_or_prefect():
    # Each costs most of a second at start-up; a status or dry run on a large store must not pay it.
    code = ("import sys; import tasks.ops.status, tasks.generation.plan, tasks.data.trainsets, storage; "
            "loaded = [m for m in ('openai', 'prefect') if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_generate_flow_loads_the_openai_sdk_only_when_it_has_something_to_buy():
    # A scheduled run that finds nothing missing plans and returns: the SDK's import would be most of a second.
    code = "import sys; import flows.generate, flows.cli; assert 'openai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_status_a_dry_run_and_sql_never_load_pandas(tmp_path):
    # pyarrow imports pandas where it is installed (0.2-0.3 s) on its first conversion of Python
    # values or time-zoned timestamps; storage.arrow makes those columns without it.
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow("arithmetic-train-00000", "train", "Ann has 2 pens and buys 3 more.\nHow many?",
                             "( 2.0 + 3.0 )", "arithmetic", "gen")])
    cot = cot_row("arithmetic-train-00000", 0, "( 2.0 + 3.0 )", "2 + 3 = 5. The answer is ( 2.0 + 3.0 ).")
    store.append([cot])
    store.append([evaluation_row(cot, 0, "correct", "It adds up.")])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "arithmetic", "arithmetic": {"train": 20, "test": 5}},
                                      "teacher": {"simulate": True}, "store": {"path": str(store.root)}}))
    for command in (["status", str(config), "--json"], ["generate", str(config), "--dry-run", "--no-progress"],
                    ["sql", str(config), "SELECT * FROM calibration"]):
        code = f"import sys; from flows.cli import main; main({command!r}); assert 'pandas' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def test_an_arms_rows_the_scored_rows_and_their_snapshot_ids_never_load_pandas(tmp_path):
    # A first `train` or `evaluate` on a large store reads its sets as Arrow columns: no pandas either.
    store = Store(str(tmp_path / "store"))
    store.append([ExampleRow(f"arithmetic-{split}-00000", split, "Ann has 2 pens and buys 3 more.\nHow many?",
                             "( 2.0 + 3.0 )", "arithmetic", "gen") for split in ("train", "validation", "test")])
    cots = [cot_row(f"arithmetic-{split}-00000", 0, "( 2.0 + 3.0 )", "2 + 3 = 5. The answer is ( 2.0 + 3.0 ).")
            for split in ("train", "validation")]
    store.append(cots)
    store.append([evaluation_row(cot, 0, "correct", "It adds up.") for cot in cots])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 20, "test": 5}}, "store": {"path": str(store.root)},
        "teacher": {"simulate": True},
        "train": {"sources": [{"source": "teacher", "teacher_model": "simulated", "cot_prompt_version": "cot-v1",
                               "eval_prompt_version": "eval-v1"}],
                  "arms": [{"name": "cot-selfeval", "mode": "cot", "n_cots": 1, "self_eval": True}]}}))
    code = f"""
import sys
from storage import Store
from tasks.config import load_config
from tasks.data.trainsets import data_snapshots, read_arm_rows, read_scored_rows
config = load_config({str(config)!r})
store = Store(config.store.path)
rows = read_arm_rows(config, store, config.train.arms[0])
assert rows.training.rows and rows.self_eval_rows and rows.judged and rows.validation
ids = data_snapshots({{"train": rows.training.rows, "self_eval": rows.self_eval_rows, "judged": rows.judged,
                      "validation": rows.validation, **read_scored_rows(config, store)}})
assert all(ids.values()), ids
assert 'pandas' not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
