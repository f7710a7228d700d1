"""Checkpoints as safetensors + JSON: loading one never runs code (no pickles, no ``torch.load``).

A checkpoint is a folder (``checkpoints/last``, ``checkpoints/best``) holding

- ``model.safetensors``: the weights to translate with (the EMA copy when EMA is on);
- ``state.safetensors``: every tensor needed to resume (raw method weights, optimiser moments,
  EMA weights, torch RNG states);
- ``state.json``: everything else (step, epoch, position in the epoch, Python/NumPy RNG states,
  scheduler counters, optimiser hyper-parameters, metric history, best metric, config hash).

Nested state dicts (optimisers, schedulers) are split into a JSON skeleton whose tensors are replaced
by ``{"__tensor__": key}`` references into ``state.safetensors``; ``join_tensors`` puts them back.
The folder is written to a temporary sibling and renamed into place, so a crash mid-write never
leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from medtrans.atomic import atomic_dir
from medtrans.errors import MedtransError

MODEL_FILE = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def split_tensors(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under a key from ``prefix``.

    Dicts with non-string keys (optimiser state is keyed by parameter index) and tuples are encoded
    so that ``join_tensors`` restores them with their exact Python types.
    """
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def join_tensors(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of ``split_tensors``."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def plain_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}


def rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Python, NumPy and torch generator states (torch's go into ``tensors``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return {
        "python": split_tensors(random.getstate(), "rng.python", tensors),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def set_rng_state(state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Restore what ``rng_state`` captured (CUDA states only when the same devices exist)."""
    random.setstate(join_tensors(state["python"], tensors))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    count = state.get("cuda_devices", 0)
    if count and torch.cuda.is_available() and torch.cuda.device_count() == count:
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(count)])


def save_checkpoint(folder: str | os.PathLike, model: dict[str, Tensor], tensors: dict[str, Tensor],
                    state: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Write a checkpoint folder atomically: a temporary sibling, then renamed over the old one."""
    with atomic_dir(folder) as tmp:
        save_file(plain_weights(model), tmp / MODEL_FILE, metadata=metadata)
        save_file(plain_weights(tensors), tmp / STATE_TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=1, allow_nan=True))
    return Path(folder)


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise MedtransError(folder, f"checkpoint has no {name}",
                            "point to a run's checkpoints/last or checkpoints/best written by medtrans train")
    return path


def _load_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file; a truncated or damaged one is a one-line error, not a Rust traceback."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        other = "best" if path.parent.name == "last" else "last"
        raise MedtransError(path, f"checkpoint file is truncated or damaged ({err})",
                            f"use the other checkpoint (predict --checkpoint {other}) or retrain; "
                            "train --resume needs an intact checkpoints/last") from None


def load_model_weights(folder: str | os.PathLike) -> dict[str, Tensor]:
    """The translate-with weights of a checkpoint folder."""
    return _load_tensors(_require(Path(folder), MODEL_FILE))


def load_state(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(state.json contents, state.safetensors tensors) of a checkpoint folder."""
    folder = Path(folder)
    state_path = _require(folder, STATE_JSON)
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as err:
        raise MedtransError(state_path, f"not valid JSON ({err})", "resume from another checkpoint") from None
    return state, _load_tensors(_require(folder, STATE_TENSORS))


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix.`` with the prefix removed (a module's state dict)."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
