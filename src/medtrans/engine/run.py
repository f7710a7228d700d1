"""A run directory, read back: the only way the predictor, the evaluator and export get a trained model.

Layout (written by ``engine.trainer.train``)::

    RUN/config.yaml            the validated, resolved config
    RUN/plan.json              preprocessing plan (spacing, slice axis, normalisers)
    RUN/splits.json            subject ids of train / val / test
    RUN/checkpoints/{last,best}/{model.safetensors, state.safetensors, state.json}
    RUN/logs/                  TensorBoard events + metrics.csv
    RUN/samples/               PNG grids source | prediction | target
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medtrans.config import Config, validate_config
from medtrans.engine.checkpoint import MODEL_FILE, load_model_weights
from medtrans.errors import MedtransError

if TYPE_CHECKING:
    from medtrans.data.plan import Plan
    from medtrans.methods.base import Method

CONFIG_FILE = "config.yaml"
PLAN_FILE = "plan.json"
SPLITS_FILE = "splits.json"


def build_method(config: Config) -> Method:
    """Construct the configured method exactly as the DESIGN contract says (untrained weights)."""
    from medtrans.registry import METHODS

    cls = METHODS.get(config.method.name)
    kwargs: dict[str, Any] = dict(config.method.args)
    if config.discriminator is not None:
        kwargs["discriminator"] = {"name": config.discriminator.name, **config.discriminator.args}
    kwargs.update(spatial_dims=config.data.spatial_dims, in_channels=config.data.in_channels, out_channels=1,
                  backbone={"name": config.backbone.name, **config.backbone.args})
    try:  # the arguments are checked against the signature; a TypeError raised inside is a real bug
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise MedtransError(
            None, f"method {config.method.name!r} rejected its arguments ({err})",
            "check method.args, backbone.args and discriminator against docs/TRAINING.md",
        ) from None
    return cls(**kwargs)


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The config a run was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MedtransError(run_dir, "not a medtrans run directory (no config.yaml)",
                            "give the folder that medtrans train wrote")
    return validate_config(yaml.safe_load(path.read_text()), path)


def checkpoint_dir(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """``checkpoints/<which>``; ``best`` falls back to ``last`` when the run never validated."""
    if which not in ("best", "last"):
        raise MedtransError(run_dir, f"unknown checkpoint {which!r}", "use best or last")
    base = Path(run_dir) / "checkpoints"
    for name in (which, "last") if which == "best" else (which,):
        if (base / name / MODEL_FILE).is_file():
            return base / name
    raise MedtransError(run_dir, f"no {which} checkpoint in {base}",
                        "train longer than checkpoint.every steps, or resume the run to write one")


def load_trained(run_dir: str | os.PathLike, which: str = "best") -> tuple[Method, Config, Plan]:
    """(method with trained weights in eval mode on CPU, its Config, its Plan)."""
    from medtrans.data.plan import Plan

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    plan_path = run_dir / PLAN_FILE
    if not plan_path.is_file():
        raise MedtransError(run_dir, "run has no plan.json", "the run was not written completely; retrain")
    plan = Plan.load(plan_path)
    method = build_method(config)
    folder = checkpoint_dir(run_dir, which)
    missing, unexpected = method.load_state_dict(load_model_weights(folder), strict=False)
    if missing or unexpected:
        raise MedtransError(
            folder,
            f"weights do not fit the configured method (missing {missing[:3]}, unexpected {unexpected[:3]})",
            "the config.yaml and checkpoint come from different runs",
        )
    return method.eval(), config, plan
