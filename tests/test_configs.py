"""Every shipped config loads, and deploy/prefect.yaml only names configs, flows, parameters and pools that exist."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from flows.cli import main
from tasks.config import DEFAULT_PRICES, load_config, parse_config
from tasks.data.datasets import load_dataset

EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))
PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
POOLS = {path.stem: path for path in (REPO / "deploy" / "work-pools").glob("*.json")}


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


def _flow(entrypoint: str):
    """The flow object an entrypoint names, imported the way a worker imports it (from the checkout)."""
    import importlib

    path, name = entrypoint.split(":")
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return getattr(module, name)


def _ids(deployments: list[dict]) -> list[str]:
    return [f"{item['entrypoint'].split(':')[1]}/{item['name']}" for item in deployments]


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(path.relative_to(REPO / "examples")) for path in EXAMPLES])
def test_shipped_config_loads_and_says_what_it_is_for(path):
    load_config(path)
    head = path.read_text().splitlines()[:12]
    assert head[0].startswith("# "), f"{path.name} must open with a comment saying what it is for"
    assert any(line.startswith("# Run:") for line in head), f"{path.name} must say how to run it"
    assert any("cost" in line.lower() for line in head), f"{path.name} must say what it costs"


def test_examples_exist():
    assert {"quickstart.yaml", "svamp.yaml"} <= {path.name for path in EXAMPLES}


PAPER = {name: REPO / "examples" / "paper" / f"{name}.yaml" for name in ("svamp", "cqa", "anli1")}
PAPER_ARMS = {  # the main table of Mind's Mirror
    "standard-finetune": dict(mode="standard", labels="gold", n_cots=1, self_eval=False),
    "standard-distill": dict(mode="standard", labels="teacher", n_cots=1, self_eval=False),
    "cot-1": dict(mode="cot", labels="gold", n_cots=1, self_eval=False),
    "cot-1-selfeval": dict(mode="cot", labels="gold", n_cots=1, self_eval=True),
    "cot-5": dict(mode="cot", labels="gold", n_cots=5, self_eval=False),
    "cot-5-selfeval": dict(mode="cot", labels="gold", n_cots=5, self_eval=True),
}
ANLI1_TRAIN = 16_946  # train_r1; the shared DSS folder lacks these inputs


def _train_examples(name: str, shared_data: Path) -> int:
    if name == "anli1":
        return ANLI1_TRAIN
    config = load_config(PAPER[name]).dataset.model_copy(update={"path": str(shared_data / name)})
    return sum(row.split == "train" for row in load_dataset(config))


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_train_every_arm_of_the_main_table_at_the_papers_settings(name, shared_data):
    config = load_config(PAPER[name])
    assert {arm.name: arm.model_dump(exclude={"name"}) for arm in config.train.arms} == PAPER_ARMS
    assert config.student.model == "google/t5-v1_1-base" and config.dataset.name == name
    assert (config.teacher.n_cots, config.teacher.n_evals) == (5, 5)
    train = config.train
    assert (train.alpha, train.batch_size, train.learning_rate) == (0.5, 16, 5e-5)
    # the assumed 20 epochs of the split's train examples, per stage
    steps = math.ceil(20 * _train_examples(name, shared_data) / train.batch_size)
    assert train.stage1_steps == train.stage2_steps == steps


_PLAN = re.compile(r"([\d,]+) (?:teacher )?requests.*?about ([\d,]+) prompt tokens.*?at most ([\d,]+) completion tokens",
                   re.DOTALL)


def _header_numbers(path: Path) -> tuple[tuple[int, ...], dict[str, float]]:
    header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    plan = tuple(int(value.replace(",", "")) for value in _PLAN.search(header).groups())
    costs = {model: float(re.search(rf"at most \$([\d.]+) at {model} prices", header).group(1))
             for model in ("gpt-3.5-turbo", "gpt-4o-mini")}
    return plan, costs


def _dry_run(name: str, shared_data: Path, store: Path, capsys) -> tuple[int, ...]:
    data = yaml.safe_load(PAPER[name].read_text())
    data["dataset"] = {"name": name, "path": str(shared_data / name), "splits": ["train", "test"]}
    if name == "anli1":  # the dev examples only: the header says so
        data["dataset"]["splits"], data["generate"]["splits"] = ["validation", "test"], ["validation"]
    data["store"]["path"] = str(store)
    path = store.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["generate", str(path), "--dry-run"]) == 0
    return tuple(int(value.replace(",", "")) for value in _PLAN.search(capsys.readouterr().out).groups())


@pytest.mark.parametrize("name", [pytest.param("svamp"), pytest.param("anli1"),
                                  pytest.param("cqa", marks=pytest.mark.slow)])  # cqa: 58,446 requests to plan
def test_paper_config_headers_give_a_fresh_dry_runs_numbers(name, shared_data, tmp_path, prefect_server, capsys):
    plan, costs = _header_numbers(PAPER[name])
    requests, prompt, completion = _dry_run(name, shared_data, tmp_path / "store", capsys)
    assert (requests, prompt, completion) == plan
    for model, cost in costs.items():  # the dry run prices the same tokens at the model's prices
        price = DEFAULT_PRICES[model]
        assert round((prompt * price.input + completion * price.output) / 1e6, 4) == cost


@pytest.mark.parametrize("deployment", _deployments(), ids=_ids(_deployments()))
def test_deployment_parameters_are_a_valid_config_for_a_real_flow(deployment):
    config = deployment["parameters"]["config"]
    if isinstance(config, str):
        assert not Path(config).is_absolute(), "configs are named relative to the repository root"
        load_config(REPO / config)
    else:
        parse_config(config, f"{deployment['name']} parameters")
    flow = _flow(deployment["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment["parameters"]) <= accepted, f"{flow.name} takes only {sorted(accepted)}"
    assert flow.name == deployment["entrypoint"].split(":")[1]  # so `flow/name` below names it


def test_deployments_use_the_shipped_pools_and_hand_training_to_the_gpu_pool():
    deployments = _deployments()
    names = {f"{item['entrypoint'].split(':')[1]}/{item['name']}": item for item in deployments}
    assert len(names) == len(deployments), "two deployments share a flow/name"
    for item in deployments:
        assert item["work_pool"]["name"] in POOLS
        flow = item["entrypoint"].split(":")[1]
        assert item["work_pool"]["name"] == ("gpu" if flow in ("train", "evaluate") else "cpu")
        for key in ("train_deployment", "evaluate_deployment"):
            if key in item["parameters"]:
                target = names[item["parameters"][key]]
                assert target["work_pool"]["name"] == "gpu"
                assert target["parameters"]["config"] == item["parameters"]["config"]


def test_every_flow_has_a_deployment_per_shipped_config():
    flows = {"distill", "generate", "resume", "train", "evaluate"}
    by_config: dict[str, set[str]] = {}
    for item in _deployments():
        by_config.setdefault(item["name"], set()).add(item["entrypoint"].split(":")[1])
    assert by_config and all(found == flows for found in by_config.values()), by_config


def test_schedules_regenerate_only_and_a_paid_one_starts_paused():
    for item in _deployments():
        for schedule in item.get("schedules") or []:
            assert item["entrypoint"].endswith(":generate"), "only regenerations run on a schedule"
            assert sum(key in schedule for key in ("cron", "interval", "rrule")) == 1
            config = load_config(REPO / item["parameters"]["config"])
            if not config.teacher.simulate:
                assert schedule.get("active") is False, "a schedule that pays must be turned on deliberately"


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_work_pool_template_declares_every_variable_it_uses(pool):
    template = json.loads(POOLS[pool].read_text())
    used = set(re.findall(r"{{\s*([\w.$-]+)\s*}}", json.dumps(template["job_configuration"])))
    # The server refuses a template that uses an undeclared variable; this says so before deploying.
    assert used <= set(template["variables"]["properties"]), used - set(template["variables"]["properties"])


def test_pull_steps_name_functions_a_worker_can_import():
    import importlib

    steps = yaml.safe_load(PREFECT_FILE.read_text())["pull"]
    assert steps, "without a pull step a worker runs flows in an empty temporary folder"
    for step in steps:
        (fqn,) = step
        module, name = fqn.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))


def test_prefect_file_names_the_prefect_that_pyproject_allows():
    from packaging.requirements import Requirement

    data = yaml.safe_load(PREFECT_FILE.read_text())
    [requirement] = re.findall(r'^\s*"(prefect[<>=!~][^"]*)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert Requirement(requirement).specifier.contains(str(data["prefect-version"]))


def test_generation_deployments_run_one_at_a_time_per_store():
    data = yaml.safe_load(PREFECT_FILE.read_text())
    for item in data["deployments"]:
        if item["entrypoint"].startswith(("flows/generate.py", "flows/resume.py")):
            assert item["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}, item["name"]
