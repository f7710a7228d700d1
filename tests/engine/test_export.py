"""ONNX export: onnxruntime gives what PyTorch gives (regression, pix2pix), also through the predictor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.config import Config
from medtrans.engine.export import PLAN_KEY, export_method, export_run, onnx_predictor, onnx_session
from medtrans.engine.predictor import Predictor
from medtrans.engine.run import load_trained
from medtrans.errors import MedtransError
from medtrans.io import load

_register()
#: what the issue asks of onnxruntime against PyTorch, in normalised units (data range 2)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pix2pix_run(phantom_root: Path, make_config: Callable[..., Config],
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtrans.engine.trainer import train

    config = make_config(phantom_root, **{
        "optim.steps": 2, "validation.every": None, "logging.tensorboard": False,
        "method": {"name": "pix2pix", "args": {"lambda_l1": 10.0}},
        "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}}})
    return train(config, run_dir=tmp_path_factory.mktemp("runs") / "pix2pix")


def test_cli_export_checks_on_the_runs_data(tiny_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tiny_run), "-o", str(tmp_path / "model.onnx")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "a slice of the run's prepared data [1, 1, 32, 32]" in result.output
    difference = float(result.output.split("PyTorch| = ")[1].split()[0])
    assert difference <= TOLERANCE
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model)
    assert PLAN_KEY in {p.key for p in model.metadata_props}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "x", "y"]


@pytest.mark.parametrize("which", ["regression", "pix2pix"])
def test_onnxruntime_equals_pytorch_on_phantom_slices(which: str, tiny_run: Path, pix2pix_run: Path,
                                                     phantom_root: Path, tmp_path: Path) -> None:
    run = tiny_run if which == "regression" else pix2pix_run
    result = export_run(run, tmp_path / f"{which}.onnx")
    assert result.real_input and result.max_difference <= TOLERANCE
    method, config, plan = load_trained(run)
    # a whole phantom subject in model space, all slices at once, at a size the export never saw
    volumes = {"t1": load(phantom_root / "sub-005" / "t1.nii.gz", modality="t1")}
    array, _ = plan.to_model_space(volumes)
    slices = torch.from_numpy(np.moveaxis(array, 1 + plan.slice_axis, 0)).float()  # (S, 1, H, W)
    slices = torch.nn.functional.pad(slices, (0, 32, 0, 0), mode="replicate")  # W 32 → 64
    with torch.no_grad():
        expected = method.translate(slices)[0].numpy()
    got = onnx_session(result.path).run(None, {"source": slices.numpy()})[0]
    assert got.shape == expected.shape == (array.shape[1 + plan.slice_axis], 1, 32, 64)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_predict_with_onnx_gives_the_runs_volume(tiny_run: Path, phantom_root: Path, tmp_path: Path) -> None:
    model = export_run(tiny_run, tmp_path / "model.onnx").path
    subject = sorted(phantom_root.glob("sub-*"))[-1]
    result = CliRunner().invoke(app, ["predict", str(model), str(subject), "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    Predictor.from_run(tiny_run, device="cpu").predict_paths([subject], tmp_path / "torch")
    name = f"{subject.name}.nii.gz"
    a, b = nib.load(tmp_path / "onnx" / name), nib.load(tmp_path / "torch" / name)
    assert np.array_equal(a.affine, b.affine) and a.shape == b.shape
    # original T2 units: the normalised tolerance times the plan's inverse scale
    scale = float(np.ptp(np.asarray(b.dataobj)))
    assert np.abs(np.asarray(a.dataobj) - np.asarray(b.dataobj)).max() <= TOLERANCE * scale
    assert onnx_predictor(model).name == "model.onnx"


def test_export_refuses_a_file_that_is_not_onnx_or_over_the_tolerance(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(MedtransError, match="not a .onnx file"):
        export_run(tiny_run, tmp_path / "model.pt")
    with pytest.raises(MedtransError, match=r"differs from PyTorch by .* \(over -1 in normalised units\)"):
        export_run(tiny_run, tmp_path / "model.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


class _StepNet(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)


def test_a_step_network_exports_with_its_schedule(tiny_run: Path, tmp_path: Path) -> None:
    """What a multi-step method's ``export_network`` returns: ``net(x_t ‖ source, t)`` and a schedule."""
    from medtrans.methods.base import ExportSpec
    from medtrans.nets import build_backbone

    method, config, plan = load_trained(tiny_run)
    step = build_backbone({"name": "unet", "depth": 2, "width": 4}, 2, 2, 1, time_conditioned=True)
    schedule = {"kind": "flow", "steps": 8, "t": [i / 8 for i in range(9)]}

    def export_network(source: torch.Tensor) -> ExportSpec:
        x = torch.cat([torch.randn_like(source), source], dim=1)
        return ExportSpec(_StepNet(step), {"x": x, "t": torch.full((len(source),), 0.25)}, schedule)

    method.export_network = export_network
    source = torch.rand(1, 1, 32, 32) * 2 - 1
    out = tmp_path / "step.onnx"
    difference, written = export_method(method, config, plan, source, out)
    assert difference <= TOLERANCE and written == tmp_path / "step.schedule.json"
    assert json.loads(written.read_text()) == schedule
    x, t = torch.rand(3, 2, 64, 32) * 2 - 1, torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        expected = step(x, t).numpy()
    got = onnx_session(out).run(None, {"x": x.numpy(), "t": t.numpy()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE
    with pytest.raises(MedtransError, match="step network of a multi-step method"):
        onnx_predictor(out)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_multi_step_methods_export_their_step_network_and_schedule(name: str, tmp_path: Path,
                                                                  tiny_run: Path) -> None:
    from medtrans.registry import METHODS

    _, config, plan = load_trained(tiny_run)
    torch.manual_seed(0)
    method = METHODS.get(name)(2, 1, backbone={"name": "unet", "depth": 2, "width": 4}).eval()
    source = torch.rand(1, 1, 32, 32) * 2 - 1
    difference, written = export_method(method, config, plan, source, tmp_path / f"{name}.onnx")
    assert difference <= TOLERANCE
    schedule = json.loads(written.read_text())
    assert schedule["default_steps"] == method.default_steps
    if name == "ddpm":
        np.testing.assert_allclose(schedule["alpha_bar"], method.schedule.alpha_bar.numpy(), rtol=1e-6)
    x, src, t = torch.rand(2, 1, 64, 32), torch.rand(2, 1, 64, 32), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        expected = method.net(torch.cat([x, src], dim=1), t).numpy()
    got = onnx_session(tmp_path / f"{name}.onnx").run(None, {"x_t": x.numpy(), "source": src.numpy(),
                                                            "t": t.numpy()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE
