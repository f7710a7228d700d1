"""Brownian bridge (SelfRDB / I2SB / BBDM): schedules at both ends and Monte-Carlo marginals, posterior
consistency with the true x_0, learning an affine map only with the source concatenated, options, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from scipy import stats
from torch import Tensor, nn
from typer.testing import CliRunner

from medtrans.errors import MedtransError
from medtrans.methods.bridges import PRESETS, BridgeSchedule
from medtrans.methods.schedules import Noise
from medtrans.nets import blocks
from medtrans.registry import BACKBONES, METHODS

TINY_UNET = {"name": "unet", "depth": 2, "width": 4}


def make(**kwargs):
    return METHODS.get("bridge")(**{"spatial_dims": 2, "in_channels": 1, "backbone": TINY_UNET, **kwargs})


# ------------------------------------------------------------------------------- FAMILIES §9 item 1
@pytest.mark.parametrize("preset", PRESETS)
def test_schedule_ends_and_monte_carlo_marginals(preset: str) -> None:
    schedule = BridgeSchedule(preset)
    n = schedule.timesteps
    gen = torch.Generator().manual_seed(1)
    x0, y = torch.rand(2, 1, 8, 8, generator=gen), torch.rand(2, 1, 8, 8, generator=gen) - 2
    eps = torch.randn(2, 1, 8, 8, generator=gen)
    assert torch.equal(schedule.q_sample(x0, y, torch.zeros(2, dtype=torch.long), eps), x0)
    end = torch.full((2,), n, dtype=torch.long)
    if preset == "selfrdb":
        assert float(schedule.s[-1]) == pytest.approx(1.08, abs=0.005)  # the soft prior of FAMILIES §1b
    else:
        assert torch.equal(schedule.q_sample(x0, y, end, eps), y)
    # 1e5 draws of one voxel pair (target 1, source 2) at both ends and inside
    draws = 100_000
    one, two = torch.ones(draws, 1), torch.full((draws, 1), 2.0)
    for i in (1, n // 3, n // 2, n - 1, n):
        x = schedule.q_sample(one, two, torch.full((draws,), i), torch.randn(draws, 1, generator=gen))
        mean, var = float(schedule.a[i] + 2 * schedule.b[i]), float(schedule.s[i]) ** 2
        assert float(x.mean()) == pytest.approx(mean, rel=0.01)
        assert float(x.var()) == pytest.approx(var, rel=0.01, abs=1e-12)


def test_preset_tables_match_the_published_schedules() -> None:
    selfrdb = BridgeSchedule("selfrdb")  # FAMILIES §1b, recomputed from SelfRDB's diffusion.py
    np.testing.assert_allclose(selfrdb.a.numpy(), [1, .92, .83, .73, .62, .5, .38, .27, .17, .08, 0],
                               atol=0.006)
    np.testing.assert_allclose(selfrdb.s.numpy(), [0, .29, .42, .53, .62, .71, .80, .87, .94, .99, 1.08],
                               atol=0.006)
    i2sb = BridgeSchedule("i2sb")  # Σβ = 0.141: peak bridge std √(Σβ / 4) = 0.19 at the middle
    assert float(i2sb.s.max()) == pytest.approx(0.1878, abs=5e-4) and int(i2sb.s.argmax()) == 500
    bbdm = BridgeSchedule("bbdm")  # m linear 0.001 … 0.999 inside; s² = 2 (m − m²), 0.5 at m = 0.5
    assert float(bbdm.b[1]) == pytest.approx(0.001) and float(bbdm.b[999]) == pytest.approx(0.999)
    assert float(bbdm.s[500]) ** 2 == pytest.approx(0.5)
    for schedule in (selfrdb, i2sb, bbdm):
        torch.testing.assert_close(schedule.a + schedule.b, torch.ones_like(schedule.a))


# ------------------------------------------------------------------------------- FAMILIES §9 item 2
STEP_COUNTS = [("selfrdb", 10), ("i2sb", 1), ("i2sb", 4), ("i2sb", 10), ("bbdm", 1), ("bbdm", 4),
               ("bbdm", 10), ("bbdm", 200)]


@pytest.mark.parametrize("preset, steps", STEP_COUNTS)
def test_true_x0_is_returned_exactly_without_noise(preset: str, steps: int) -> None:
    schedule = BridgeSchedule(preset)
    gen = torch.Generator().manual_seed(2)
    x0, y = torch.rand(3, 1, 6, 6, generator=gen) * 2 - 1, torch.rand(3, 1, 6, 6, generator=gen) * 2 - 1
    seen = []

    def oracle(x: Tensor, index: int) -> Tensor:
        seen.append(index)
        return x0

    out = schedule.run(oracle, y, steps, eta=0.0, noise=Noise.seeded(range(3)))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)
    assert len(seen) == steps and seen[0] == schedule.timesteps


@pytest.mark.parametrize("preset, steps", [("selfrdb", 10), ("i2sb", 4), ("bbdm", 4), ("bbdm", 10)])
def test_posterior_steps_keep_the_marginals_with_noise(preset: str, steps: int) -> None:
    """1e5 independent chains from y; at the middle index and the last one before 0 the samples must
    follow q(x_t | x_0, y) (KS; a posterior variance off by 2% already fails)."""
    schedule = BridgeSchedule(preset)
    noise = Noise([torch.Generator().manual_seed(3)])
    x0, y = torch.full((1, 1, 100_000), 0.6), torch.full((1, 1, 100_000), -0.8)
    x = schedule.prior(y, noise)
    indices = schedule.indices(steps)
    checked = {indices[len(indices) // 2], indices[-2]}
    for index, next_index in zip(indices[:-1], indices[1:], strict=True):
        x = schedule.step(x0, index, next_index, x, y, eta=1.0, noise=noise)
        if next_index in checked:
            mean = float(schedule.a[next_index]) * 0.6 - float(schedule.b[next_index]) * 0.8
            law = (mean, float(schedule.s[next_index]))
            p = stats.kstest(x.flatten().double().numpy(), "norm", args=law).pvalue
            assert p > 0.01, (next_index, p)


# ------------------------------------------------------------------------------- FAMILIES §9 item 4
@BACKBONES.register("test_pixel_mlp")
class PixelMLP(blocks.TimeConditioned):
    """Backbone contract with 1×1 convolutions: an MLP per voxel, FiLM from the time after layer one."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, width: int = 32,
                 time_dim: int = 0) -> None:
        super().__init__()
        self.init_time(time_dim)
        self.first = blocks.conv(spatial_dims, in_channels, width, kernel_size=1)
        self.film = self.films(width)
        self.rest = nn.Sequential(nn.SiLU(), blocks.conv(spatial_dims, width, width, kernel_size=1),
                                  nn.SiLU(), blocks.conv(spatial_dims, width, out_channels, kernel_size=1))

    def forward(self, x: Tensor, t: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        h = self.first(x)
        embedding = self.embedding(t, emb, x.shape[0])
        if embedding is not None:
            h = self.film(h, embedding)
        return self.rest(h)


def affine_batch(gen: torch.Generator, batch: int = 32) -> dict[str, Tensor]:
    source = torch.rand(batch, 1, 4, 4, generator=gen) * 0.8 - 0.6
    return {"source": source, "target": 2 * source + 0.5 + 0.1 * torch.randn(source.shape, generator=gen)}


def affine_errors(condition_source: bool, train) -> tuple[float, float]:
    """(mean |mean of 16 samples − (2y + 0.5)|, mean per-voxel sample std) after 400 steps, 10-step sampling.

    I2SB preset: its last step starts from s ≈ 0.1, so samples can carry the data's 0.1 spread; SelfRDB's
    starts from s_1 ≈ 0.29 and, without its adversarial term, returns nearly the conditional mean.
    """
    torch.manual_seed(0)
    method = make(backbone={"name": "test_pixel_mlp", "time_dim": 16}, preset="i2sb",
                  condition_source=condition_source)
    gen = torch.Generator().manual_seed(0)
    train(method, (affine_batch(gen) for _ in range(400)), lr=1e-2)
    source = affine_batch(gen, 8)["source"]
    with torch.no_grad():
        mean, std = method.translate(source, steps=10, samples=16, noise=Noise.seeded(range(8)))
    return float((mean - (2 * source + 0.5)).abs().mean()), float(std.mean())


def test_bridge_learns_an_affine_map_only_with_the_source(train) -> None:
    error, spread = affine_errors(True, train)
    assert error < 0.05 and 0.05 <= spread <= 0.2, (error, spread)
    blind, _ = affine_errors(False, train)  # NVlabs/I2SB #3: the end point alone is not enough
    assert blind > 3 * error and blind > 0.05, (blind, error)


# ------------------------------------------------------------------------------- options
def pixel_bridge(**kwargs):
    return make(backbone={"name": "test_pixel_mlp", "width": 8, "time_dim": 8}, **kwargs)


def test_inputs_steps_and_groups(assert_groups_partition) -> None:
    assert pixel_bridge(in_channels=2).net.first.in_channels == 3  # x_t + both source channels
    assert pixel_bridge(in_channels=2, recursions=2).net.first.in_channels == 4  # + the previous x̂_0
    assert pixel_bridge(condition_source=False).net.first.in_channels == 1
    defaults = {p: pixel_bridge(preset=p) for p in PRESETS}
    assert {p: m.default_steps for p, m in defaults.items()} == {"selfrdb": 10, "i2sb": 4, "bbdm": 4}
    assert {p: m.prediction for p, m in defaults.items()} == {"selfrdb": "x0", "i2sb": "residual",
                                                             "bbdm": "residual"}
    assert pixel_bridge(recursions=2).evaluations(None) == 20
    with pytest.raises(MedtransError, match="trained with 10 steps and cannot sample with 4"):
        defaults["selfrdb"].translate(torch.zeros(1, 1, 4, 4), steps=4)
    assert defaults["i2sb"].resolve_steps(7) == 7
    with pytest.raises(MedtransError, match="at most 1000"):
        defaults["bbdm"].resolve_steps(1001)
    single = defaults["selfrdb"]
    assert single.groups == ("g",) and single.optimizer_settings("g") == {}
    assert_groups_partition(single)
    with pytest.raises(MedtransError, match="adversarial term is off"):
        pixel_bridge(discriminator={"name": "patchgan"})
    gan = pixel_bridge(adversarial=0.5, discriminator={"name": "patchgan", "n_layers": 1, "width": 4})
    assert gan.groups == ("g", "d") and gan.optimizer_settings("d") == {"betas": (0.5, 0.9)}
    assert gan.discriminator.model[0].in_channels == 3  # x_{t'}, x_t and a channel holding t
    assert_groups_partition(gan)
    timed = pixel_bridge(adversarial=0.5)  # default: timed_patchgan, t through its time embedding
    assert timed.timed and timed.discriminator.model[0].in_channels == 2


def count_passes(method) -> list[Tensor]:
    """Records the input of every network pass (a forward pre-hook on the real network)."""
    inputs: list[Tensor] = []
    method.net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    return inputs


def test_recursion_trains_through_both_passes_and_stops_per_item_when_consistent() -> None:
    torch.manual_seed(0)
    method = make(recursions=2)
    passes = count_passes(method)
    batch = {"source": torch.rand(2, 1, 8, 8), "target": torch.rand(2, 1, 8, 8)}
    method.losses(batch, "g")
    assert len(passes) == 2
    assert not passes[0][:, 2:].any()  # the first pass gets zeros in the recursion channel
    assert passes[1][:, 2:].requires_grad  # the second gets the first x̂_0, gradients flowing through it
    never, always = make(recursions=3, consistency=1e9), make(recursions=3, consistency=0.0)
    for method, per_step in ((never, 1), (always, 3)):
        passes = count_passes(method)
        with torch.no_grad():
            method.translate(torch.rand(2, 1, 8, 8), noise=Noise.seeded([0, 1]))
        assert len(passes) == 10 * per_step
    # a converged item is frozen: an item's sample does not depend on the batch it is in
    method = make(recursions=3, consistency=0.05)
    source = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        together = method.translate(source, samples=2, noise=Noise.seeded([5, 6, 7]))
        alone = method.translate(source[1:2], samples=2, noise=Noise.seeded([6]))
    torch.testing.assert_close(together[0][1:2], alone[0])
    torch.testing.assert_close(together[1][1:2], alone[1])


def test_adversarial_term_is_non_saturating_and_the_discriminator_learns(train) -> None:
    torch.manual_seed(0)
    method = pixel_bridge(adversarial=0.5, discriminator={"name": "timed_patchgan", "n_layers": 1, "width": 4,
                                                          "time_dim": 8})
    gen = torch.Generator().manual_seed(0)
    batch = affine_batch(gen, 4)
    batch = {k: torch.nn.functional.interpolate(v, size=(12, 12)) for k, v in batch.items()}
    terms = method.losses(batch, "g")
    assert set(terms) == {"l1", "gan"}
    _, fake, real, x, t = method._pair
    logits = method._judge(fake, x, t)
    assert terms["gan"].item() == pytest.approx(0.5 * torch.nn.functional.softplus(-logits).mean().item(),
                                                rel=1e-5)
    before = [p.detach().clone() for p in method.discriminator.parameters()]
    history = train(method, [batch] * 3)
    assert {"g/l1", "g/gan", "d/real", "d/fake"} == set(history[-1])
    assert all(not torch.equal(a, b) for a, b in zip(before, method.discriminator.parameters(), strict=True))


# ------------------------------------------------------------------------------- the real CLI
def cli(*args: object) -> str:
    from medtrans.cli import _register, app

    _register()
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def bridge_recipe(root: Path, **method_args) -> dict:
    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "phantom_t1_t2_bridge.yaml")
                            .read_text())
    recipe["data"].update(root=str(root), splits={"train": 0.4, "val": 0.2, "test": 0.4})
    recipe["backbone"]["args"] = {"depth": 2, "width": 4}
    recipe["method"]["args"].update(method_args)
    recipe.update(device="cpu", logging={"every": 1, "progress": False, "tensorboard": False},
                  checkpoint={"every": 100})
    recipe["optim"].update(steps=2, batch_size=4, amp=False)
    recipe["validation"] = {"every": 2, "max_subjects": 1}
    return recipe


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("bridge") / "data"
    cli("phantom", data, "--subjects", 5, "--size", "24x24x12", "--modalities", "t1,t2", "--seed", 3)
    return data


def test_cli_train_predict_samples_evaluate(phantom: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "bridge.yaml"
    recipe.write_text(yaml.safe_dump(bridge_recipe(phantom)))
    run = tmp_path / "run"
    cli("train", recipe, "--run-dir", run)
    test = json.loads((run / "splits.json").read_text())["test"]
    cli("predict", run, *(phantom / s for s in test), "-o", tmp_path / "pred", "--samples", 3,
        "--seed", 1, "--device", "cpu")
    for s in test:
        std = np.asarray(nib.load(tmp_path / "pred" / f"{s}_t2_std.nii.gz").dataobj)
        assert np.isfinite(std).all() and std.max() > 0  # posterior noise gives a spread
    cli("evaluate", tmp_path / "pred", phantom, "--ref-modality", "t2", "-o", tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "std_ratio" in json.dumps(summary)


def test_resume_is_exact_with_recursion_and_the_adversarial_term(phantom: Path, tmp_path: Path) -> None:
    from medtrans.config import validate_config
    from medtrans.engine.trainer import train

    raw = bridge_recipe(phantom, recursions=2, adversarial=0.1)
    raw.update(deterministic=True, discriminator={"name": "timed_patchgan",
                                                  "args": {"n_layers": 1, "width": 4, "time_dim": 8}})
    raw["optim"].update(steps=4, ema=0.8)
    config = validate_config(raw)
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=2)
    train(config, resume=parted)
    assert any(k.startswith("discriminator.") for k in load_file(whole / "checkpoints" / "last" /
                                                                 "model.safetensors"))
    for name in ("model.safetensors", "state.safetensors"):
        a, b = (load_file(run / "checkpoints" / "last" / name) for run in (whole, parted))
        assert a.keys() == b.keys() and len(a) > 10
        for key in a:
            assert torch.equal(a[key], b[key]), key
