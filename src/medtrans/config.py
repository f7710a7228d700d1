"""Typed, validated run configuration: YAML in, one typed object out, one-line errors naming the key.

Validation happens once, here, at the edge; the trainer and the predictor receive a ``Config`` and never
look at raw dicts. ``load_config(path, overrides)`` applies ``--set a.b=c`` overrides (values parsed as
YAML) before validating, so an override is checked exactly like a line of the file.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medtrans.atomic import write_text
from medtrans.errors import MedtransError


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitFractions(_Strict):
    """Subject-level split fractions (they must sum to 1)."""

    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DataConfig(_Strict):
    """Where the scans are and which task to learn."""

    root: Path
    layout: str | None = None
    sources: list[str] = Field(min_length=1)
    target: str
    paired: bool = True
    dims: Literal["2d", "2.5d", "3d"] = "2d"
    context: int = Field(1, ge=0, description="2.5D: neighbouring slices on each side of the centre slice")
    patch_size: list[int] | None = None
    splits: SplitFractions = Field(default_factory=SplitFractions)
    splits_file: Path | None = Field(None, description="a splits.json (e.g. another run's); wins over splits")
    cache_dir: Path | None = None
    samples_per_epoch: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    source_dropout: float = Field(0.0, ge=0, lt=1, description="multi-source runs: drop each source of a "
                                  "training sample with this probability (zeroed, plus availability "
                                  "channels), so the run predicts from any subset of its sources")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.target in self.sources:
            raise ValueError(f"target {self.target!r} is also a source")
        if self.source_dropout > 0 and len(self.sources) < 2:
            raise ValueError("source_dropout needs at least two sources (one is always kept)")
        if self.patch_size is not None:
            want = 3 if self.dims == "3d" else 2
            if len(self.patch_size) != want or min(self.patch_size) < 1:
                raise ValueError(f"patch_size needs {want} positive sizes for dims {self.dims}")
        return self

    @property
    def spatial_dims(self) -> int:
        return 3 if self.dims == "3d" else 2

    @property
    def in_channels(self) -> int:
        """Model input channels: each source, times the slice stack in 2.5D, with an availability
        channel per source channel when ``source_dropout`` is on (``data.missing``)."""
        from medtrans.data.missing import input_channels

        stack = 2 * self.context + 1 if self.dims == "2.5d" else 1
        return input_channels(len(self.sources), stack, self.source_dropout)


class PlanConfig(_Strict):
    """Use an existing plan.json, or options passed to ``data.plan.make_plan``."""

    path: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> PlanConfig:
        if self.path is not None and self.options:
            raise ValueError("give either path or options, not both")
        return self


class Component(_Strict):
    """A registered component (backbone, method, discriminator) and its constructor arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Strict):
    """Optimisation: one optimiser per method group, all sharing these settings unless overridden."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(2e-4, gt=0)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup: int = Field(0, ge=0, description="linear warm-up steps")
    step_size: int = Field(1000, ge=1, description="step schedule: multiply lr by gamma every step_size")
    gamma: float = Field(0.5, gt=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a fraction of lr")
    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    amp: bool = False
    channels_last: bool = False
    ema: float | None = Field(None, gt=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _length(self) -> OptimConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of steps or epochs")
        return self


class LoggingConfig(_Strict):
    tensorboard: bool = True
    every: int = Field(10, ge=1, description="log scalars every N steps")
    samples: bool = Field(True, description="PNG grid of validation subjects at every validation")
    progress: bool = True


class ValidationConfig(_Strict):
    every: int | None = Field(None, ge=1, description="validate every N steps (None: only at the end)")
    max_subjects: int | None = Field(4, ge=1)
    metric: Literal["psnr", "ssim", "mae"] = "psnr"
    max_slices: int | None = Field(24, ge=1, description="2D/2.5D multi-step methods: validate on this many "
                                   "evenly spaced foreground slices per subject (sampling is costly)")

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "mae"


class InferenceConfig(_Strict):
    """Defaults of ``medtrans predict`` (and validation) for this run; the CLI options override them."""

    steps: int | None = Field(None, ge=1, description="sampling steps (None: the method's default)")
    samples: int = Field(1, ge=1, description="samples per voxel: the prediction is their mean, and a "
                         "std map is written beside it when > 1")
    seed: int = Field(0, description="seeds the sampling noise, so a prediction is reproducible")
    tta: bool = Field(False, description="flip test-time augmentation (its spread is a std map)")
    overlap: float = Field(0.5, ge=0, lt=1, description="3D: sliding-window overlap")


class CheckpointConfig(_Strict):
    every: int = Field(500, ge=1, description="write checkpoints/last every N steps (and at the end)")


class Config(_Strict):
    """A whole training run. ``name`` names the run folder under ``runs_dir`` unless one is given."""

    name: str | None = None
    runs_dir: Path = Path("runs")
    data: DataConfig
    plan: PlanConfig = Field(default_factory=PlanConfig)
    backbone: Component
    method: Component
    discriminator: Component | None = None
    optim: OptimConfig
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    deterministic: bool = False
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (paths as strings), every default filled in."""
        return self.model_dump(mode="json")

    def training_hash(self) -> str:
        """Hash of what decides the weights; a resumed run must match it (length and logging may change)."""
        items = json.dumps(self._training_items(), sort_keys=True)
        return hashlib.sha256(items.encode()).hexdigest()[:16]

    def training_differences(self, other: Config) -> list[str]:
        """Key paths whose values differ and that change the training (for a resume error)."""
        a, b = self._training_items(), other._training_items()
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    def _training_items(self) -> dict[str, Any]:
        return {k: v for k, v in _flatten(self.to_dict()).items() if not k.startswith(RESUMABLE)}

    def with_absolute_paths(self) -> Config:
        """Paths resolved against the working directory, so a run can be resumed from anywhere."""

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else Path(path).expanduser().resolve()

        data = self.data.model_copy(update={"root": absolute(self.data.root),
                                            "cache_dir": absolute(self.data.cache_dir),
                                            "splits_file": absolute(self.data.splits_file)})
        plan = self.plan.model_copy(update={"path": absolute(self.plan.path)})
        return self.model_copy(update={"data": data, "plan": plan, "runs_dir": absolute(self.runs_dir)})


#: keys a resumed run may change: length, logging, validation, checkpointing, device, where data live
#: (splits and plan are read back from the run itself)
RESUMABLE = ("name", "runs_dir", "device", "logging.", "validation.", "inference.", "checkpoint.",
             "data.cache_dir", "data.num_workers", "data.root", "data.splits_file", "plan.path",
             "optim.steps", "optim.epochs")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def apply_override(raw: dict[str, Any], override: str, path: str | os.PathLike | None = None) -> None:
    """Apply one ``a.b.c=value`` in place; the value is parsed as YAML (``1e-3``, ``[64, 64]``, ``null``)."""
    if "=" not in override:
        raise MedtransError(path, f"override {override!r} has no '='", "write it as --set key.path=value")
    key, _, text = override.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise MedtransError(path, f"override key {key!r} is malformed", "write it as --set optim.lr=0.001")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MedtransError(path, f"override {override!r} is not valid YAML ({err})",
                            "quote the value") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise MedtransError(path, f"override {key}: {where} is a value, not a section",
                                "check the key path")
        node = child
    node[parts[-1]] = value


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as 'key.path: problem (what is allowed)'."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    if kind == "extra_forbidden":
        parent = _section_model(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "see docs/TRAINING.md"
        return f"{key}: unknown key (allowed under {'.'.join(loc[:-1]) or 'the top level'}: {allowed})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {shown} is not allowed (allowed values: {allowed})"
    if kind == "value_error":
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    return f"{key}: {shown} is invalid ({err['msg']})"


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    """The model class that validates the section at ``loc`` (for listing its allowed keys)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def validate_config(raw: dict[str, Any], path: str | os.PathLike | None = None) -> Config:
    """Validate a raw dict; errors become one MedtransError line naming every bad key path."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise MedtransError(path, "; ".join(problems), "fix the config file or the --set override") from None
    _check_components(config, path)
    return config


#: constructor arguments the engine fills in itself (not allowed under ``args``)
_ENGINE_ARGS = ("spatial_dims", "in_channels", "out_channels", "backbone", "discriminator")


def _check_components(config: Config, path: str | os.PathLike | None) -> None:
    """Registered names and their ``args`` are checked here, so a typo fails before any data is read."""
    from medtrans.registry import BACKBONES, DISCRIMINATORS, LAYOUTS, METHODS

    checks = [("backbone", config.backbone, BACKBONES), ("method", config.method, METHODS)]
    if config.discriminator is not None:
        checks.append(("discriminator", config.discriminator, DISCRIMINATORS))
    if config.data.layout is not None and config.data.layout not in LAYOUTS.names():
        raise MedtransError(path, f"data.layout: {config.data.layout!r} is not a known layout",
                            f"allowed values: {', '.join(LAYOUTS.names())}")
    for key, component, registry in checks:
        if component.name not in registry.names():
            raise MedtransError(path, f"{key}.name: {component.name!r} is not a known {registry.kind}",
                                f"allowed values: {', '.join(registry.names())}")
        cls = registry.get(component.name)
        if key == "method" and cls.needs_pairs(component.args) and not config.data.paired:
            raise MedtransError(path, f"data.paired: false, but method {component.name!r} learns from pairs",
                                "set data.paired: true, or use an unpaired method such as cyclegan")
        params = inspect.signature(cls).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        allowed = [n for n in params if n not in _ENGINE_ARGS]
        for arg in component.args:
            if arg not in allowed:
                raise MedtransError(path, f"{key}.args.{arg}: not an argument of {registry.kind} "
                                    f"{component.name!r}", f"allowed: {', '.join(allowed) or 'none'}")


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise MedtransError(path, "config file not found",
                            "give the path to a YAML recipe, e.g. configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = f" at line {err.problem_mark.line + 1}" if getattr(err, "problem_mark", None) else ""
        raise MedtransError(path, f"not valid YAML{line}", "check indentation and quoting") from None
    if not isinstance(raw, dict):
        raise MedtransError(path, "the top level is not a mapping", "write key: value pairs")
    for override in overrides:
        apply_override(raw, override, path)
    return validate_config(raw, path)


def dump_config(config: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    return write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
