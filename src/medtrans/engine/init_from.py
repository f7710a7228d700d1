"""Staged training: sub-networks of a new method start from another run's weights, optionally frozen.

``init_from: [{network: vqvae, run: runs/stage1, checkpoint: best, freeze: true}]`` copies the
earlier run's ``vqvae.*`` tensors (``source`` names them when the attribute is called differently
there) into the attribute ``vqvae`` of the method, right after it is built. Every entry is checked
before anything is copied, with one error per problem: the folder is not a run, the network does not
exist in this method or in that run's weights, or a tensor does not fit (the first one is named).

A frozen network has ``requires_grad`` off (the trainer leaves it out of every optimiser) and is put
in eval mode; a method whose ``train()`` could switch it back keeps it in eval (e.g. vqar). The
earlier run's own config is not read beyond checking it exists: the method's arguments must build the
same shapes, which the tensor check enforces.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from medtrans.config import InitFrom
from medtrans.engine.checkpoint import load_model_weights
from medtrans.engine.run import CONFIG_FILE, checkpoint_dir
from medtrans.errors import MedtransError


def network_of(method: nn.Module, name: str) -> nn.Module:
    """The sub-network ``name`` of ``method``, or an error listing the ones it has."""
    module = getattr(method, name, None) if name.isidentifier() else None
    if not isinstance(module, nn.Module):
        have = ", ".join(n for n, _ in method.named_children())
        raise MedtransError(None, f"init_from.network: {type(method).__name__} has no network {name!r}",
                            f"use one of: {have}")
    return module


def run_weights(entry: InitFrom) -> dict[str, Tensor]:
    """The ``entry.source_name.*`` tensors of the earlier run, with that prefix removed."""
    run = Path(entry.run)
    if not (run / CONFIG_FILE).is_file():
        raise MedtransError(run, "init_from.run is not a medtrans run (no config.yaml)",
                            "give the folder medtrans train wrote for the earlier stage")
    folder = checkpoint_dir(run, entry.checkpoint)
    prefix = f"{entry.source_name}."
    weights = load_model_weights(folder)
    picked = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    if not picked:
        have = ", ".join(sorted({key.split(".", 1)[0] for key in weights}))
        raise MedtransError(folder, f"init_from: the run has no network {entry.source_name!r}",
                            f"set init_from.source to one of: {have}")
    return picked


def check_fit(network: nn.Module, weights: dict[str, Tensor], entry: InitFrom) -> None:
    """Same tensor names and shapes, or an error naming the first that differs."""
    own = network.state_dict()
    for key in sorted(set(own) | set(weights)):
        if key not in weights or key not in own:
            side = "the earlier run lacks" if key not in weights else "this method lacks"
            raise MedtransError(entry.run, f"init_from {entry.network!r}: {side} tensor "
                                f"{entry.source_name}.{key}", "give the method the same network "
                                "arguments as the earlier run")
        if tuple(own[key].shape) != tuple(weights[key].shape):
            raise MedtransError(entry.run, f"init_from {entry.network!r}: tensor {entry.source_name}.{key} "
                                f"has shape {tuple(weights[key].shape)} there, {tuple(own[key].shape)} "
                                "here", "give the method the same network arguments as the earlier run")


def freeze(network: nn.Module) -> None:
    network.requires_grad_(False)
    network.eval()


def apply_init_from(method: nn.Module, entries: list[InitFrom], load: bool = True) -> None:
    """Load (when ``load``) and freeze the configured sub-networks; every entry is checked first.

    ``load=False`` only freezes: a resumed run or a trained run being read back gets every weight
    from its own checkpoint and must not need the earlier run's folder.
    """
    plan = []
    for entry in entries:
        network = network_of(method, entry.network)
        weights = None
        if load:
            weights = run_weights(entry)
            check_fit(network, weights, entry)
        plan.append((entry, network, weights))
    for entry, network, weights in plan:
        if weights is not None:
            network.load_state_dict(weights)
        if entry.freeze:
            freeze(network)
