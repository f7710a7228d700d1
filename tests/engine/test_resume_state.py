"""Checkpoint files: safetensors + JSON only, exact round trips of optimiser, scheduler and RNG states."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from medtrans.engine import checkpoint as ckpt


def trained_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.5, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def test_split_join_restores_optimizer_and_scheduler_exactly(tmp_path: Path) -> None:
    net, opt, sched = trained_adam()
    tensors: dict[str, torch.Tensor] = {}
    state = {"opt": ckpt.split_tensors(opt.state_dict(), "optim.g", tensors),
             "sched": ckpt.split_tensors(sched.state_dict(), "sched.g", tensors)}
    ckpt.save_checkpoint(tmp_path / "last", net.state_dict(), tensors, state)

    loaded_state, loaded_tensors = ckpt.load_state(tmp_path / "last")
    net2, opt2, sched2 = trained_adam()  # same shapes; overwritten below
    for p in net2.parameters():
        p.data.zero_()
    net2.load_state_dict(ckpt.load_model_weights(tmp_path / "last"))
    opt2.load_state_dict(ckpt.join_tensors(loaded_state["opt"], loaded_tensors))
    sched2.load_state_dict(ckpt.join_tensors(loaded_state["sched"], loaded_tensors))
    restored = opt2.state_dict()
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # betas tuple, lr, indices intact
    for index, slots in original["state"].items():
        for name, value in slots.items():
            assert torch.equal(restored["state"][index][name], value)
    assert sched2.state_dict() == sched.state_dict()

    # one more identical step from both gives identical weights
    x = torch.randn(8, 4)
    for model, optimizer in ((net, opt), (net2, opt2)):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_states_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    tensors: dict[str, torch.Tensor] = {}
    state = {"rng": ckpt.rng_state(tensors)}
    ckpt.save_checkpoint(tmp_path / "c", {}, tensors, state)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    loaded_state, loaded_tensors = ckpt.load_state(tmp_path / "c")
    ckpt.set_rng_state(loaded_state["rng"], loaded_tensors)
    assert random.random() == expected[0]
    assert np.random.rand(3).tolist() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_folder_replaced_atomically_and_holds_no_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(folder, {"w": torch.ones(2)}, {"x": torch.zeros(1)}, {"step": 1})
    ckpt.save_checkpoint(folder, {"w": torch.full((2,), 2.0)}, {"x": torch.zeros(1)}, {"step": 2},
                         metadata={"step": "2"})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.safetensors", "state.json", "state.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == ["last"]  # no temporary or old folders left
    assert json.loads((folder / "state.json").read_text()) == {"step": 2}
    assert torch.equal(ckpt.load_model_weights(folder)["w"], torch.full((2,), 2.0))
    for path in folder.iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # no pickle protocol header
