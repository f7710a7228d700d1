"""A trained run as ONNX for an inference server, checked against PyTorch before it is kept.

``export_run`` traces what the method's ``export_network`` names (the whole translation for one-pass
methods; the step network for multi-step ones, with the schedule written as ``<model>.schedule.json``)
with the legacy TorchScript exporter (``dynamo=False``: no onnxscript needed), dynamic batch and
spatial axes, and stores the run's plan and config in the model's metadata, so ``medtrans predict
model.onnx …`` needs nothing else to put the result back on the source grid in original units.

The export is run through onnxruntime on a real input (a slice or patch of the run's prepared data, or a
random input of the same size when the cache is gone) and on a batch of two of another size; a
maximum difference above ``tolerance`` (normalised units) refuses the file.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.atomic import atomic_path, write_json
from medtrans.errors import MedtransError
from medtrans.methods.base import Method

#: ONNX opset: InstanceNormalization, dynamic Pad/Resize; read by onnxruntime ≥ 1.12
OPSET = 17
PLAN_KEY, CONFIG_KEY, SCHEDULE_KEY = "medtrans.plan", "medtrans.config", "medtrans.schedule"
#: metadata: spatial sizes the model must be given a multiple of (the trace keeps the networks' inner
#: padding for the example's size, none for multiples of this; the predictor pads to it)
PAD_KEY = "medtrans.pad_multiple"


@dataclass
class ExportResult:
    path: Path
    max_difference: float
    schedule: Path | None
    input_shape: tuple[int, ...]
    real_input: bool


class _OnnxInstanceNorm(nn.Module):
    """``blocks.InstanceNorm`` as one ``F.instance_norm`` (ONNX InstanceNormalization).

    The training module normalises each sample by a loop over the batch (to keep channels_last
    layouts), which a trace would unroll to the example's batch size.
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def exportable(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with the layers a trace cannot keep dynamic swapped for equivalents."""
    from medtrans.nets.blocks import InstanceNorm

    network = copy.deepcopy(network).eval()
    for module in list(network.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm):
                setattr(module, child_name, _OnnxInstanceNorm(child))
    return network


def example_source(run_dir: Path, config: Any, plan: Any, in_channels: int) -> tuple[Tensor, bool]:
    """A (1, C, *spatial) model-space input the network sees at inference, and whether it is real data.

    2D / 2.5D: the middle slice of the first cached subject (with its context stack), padded to a
    multiple of 32 as the predictor pads; 3D: the central ``patch_size`` window; a run trained with
    source dropout gets its availability channels (all sources present). Without a readable cache: a
    random input of that size (uniform in [-1, 1], seeded).
    """
    from medtrans.data.missing import with_availability
    from medtrans.engine.inferers import PAD_MULTIPLE, context_stack, pad_in_plane

    dims = str(config.data.dims)
    cache = Path(config.data.cache_dir or run_dir / "cache") / plan.hash()
    subjects = sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []
    found = [s for s in subjects if all((s / f"{m}.npy").is_file() for m in plan.sources)]
    patch = list(config.data.patch_size or plan.patch_size)
    if found:
        # the cache is slice-major: (C, S, H, W)
        images = np.stack([np.load(found[0] / f"{m}.npy") for m in plan.sources])
        if config.data.source_dropout > 0:  # the availability channels, every source present
            images = with_availability(images, [True] * len(plan.sources))
        array = torch.from_numpy(images)
        if dims != "3d":
            context = int(config.data.context) if dims == "2.5d" else 0
            x = context_stack(array, torch.tensor([array.shape[1] // 2]), context)
            return pad_in_plane(x, PAD_MULTIPLE)[0].float(), True
        volume = torch.movedim(array, 1, 1 + int(plan.slice_axis))  # (C, X, Y, Z)
        if all(n >= p for n, p in zip(volume.shape[1:], patch, strict=True)):
            starts = [(n - p) // 2 for n, p in zip(volume.shape[1:], patch, strict=True)]
            window = volume[:, starts[0]:starts[0] + patch[0], starts[1]:starts[1] + patch[1],
                            starts[2]:starts[2] + patch[2]]
            return window[None].float().contiguous(), True
    if dims != "3d":
        patch = [-(-n // PAD_MULTIPLE) * PAD_MULTIPLE for n in patch[-2:]]
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, in_channels, *patch, generator=generator) * 2 - 1, False


def _dynamic_axes(inputs: dict[str, Tensor], spatial_dims: int) -> dict[str, dict[int, str]]:
    """Batch (axis 0) of every input and output; spatial axes of image-shaped ones."""
    spatial = {2 + i: f"{'xyz'[i]}" for i in range(spatial_dims)}
    axes = {name: {0: "batch", **(spatial if t.dim() == spatial_dims + 2 else {})}
            for name, t in inputs.items()}
    axes["prediction"] = {0: "batch", **spatial}
    return axes


def _other_size(inputs: dict[str, Tensor], spatial_dims: int) -> dict[str, Tensor]:
    """A batch of two random inputs with the last spatial axis 32 longer (checks the dynamic axes)."""
    generator = torch.Generator().manual_seed(1)
    out = {}
    for name, t in inputs.items():
        shape = [2, *t.shape[1:]]
        if t.dim() == spatial_dims + 2:
            shape[-1] += 32
        out[name] = torch.rand(*shape, generator=generator, dtype=t.dtype) * 2 - 1
    return out


def onnx_session(path: str | os.PathLike) -> Any:
    """An onnxruntime CPU session using as many threads as torch (``OMP_NUM_THREADS`` is honoured alike)."""
    try:
        import onnxruntime
    except ImportError:
        raise MedtransError(path, "onnxruntime is not installed", "pip install 'medtrans[export]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(session: Any, network: nn.Module, inputs: dict[str, Tensor]) -> float:
    with torch.no_grad():
        expected = network(*inputs.values()).float().numpy()
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected)))


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, which: str = "best",
               tolerance: float = 1e-3) -> ExportResult:
    """Write ``out`` (.onnx) from ``checkpoints/<which>`` of a run; see the module docstring."""
    from medtrans.engine.run import load_trained

    run_dir, out = Path(run_dir), Path(out)
    if out.suffix != ".onnx":
        raise MedtransError(out, "the output is not a .onnx file", "name it e.g. model.onnx")
    method, config, plan = load_trained(run_dir, which=which)
    source, real = example_source(run_dir, config, plan, method.in_channels)
    difference, schedule = export_method(method, config, plan, source, out, tolerance)
    return ExportResult(path=out, max_difference=difference, schedule=schedule,
                        input_shape=tuple(source.shape), real_input=real)


def export_method(method: Any, config: Any, plan: Any, source: Tensor, out: Path,
                  tolerance: float = 1e-3) -> tuple[float, Path | None]:
    """Trace ``method.export_network(source)`` to ``out`` and check it: (max difference, schedule file)."""
    from medtrans.engine.inferers import PAD_MULTIPLE

    try:
        import onnx
    except ImportError:
        raise MedtransError(None, "onnx is not installed", "pip install 'medtrans[export]'") from None
    method = method.float().eval()
    spec = method.export_network(source)
    network = exportable(spec.network)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the tracer warns that shape-dependent padding becomes constant: inputs padded to PAD_MULTIPLE
        # need none (checked below on a second size); instance_norm is exported with its input statistics
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "ONNX export mode is set to TrainingMode.EVAL")
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, chosen (docs/SCALING.md)
        torch.onnx.export(network, tuple(spec.inputs.values()), str(tmp), input_names=list(spec.inputs),
                          output_names=["prediction"], opset_version=OPSET, dynamo=False,
                          dynamic_axes=_dynamic_axes(spec.inputs, method.spatial_dims))
        model = onnx.load(str(tmp))
        metadata = {PLAN_KEY: json.dumps(plan.to_dict()), CONFIG_KEY: json.dumps(config.to_dict()),
                    SCHEDULE_KEY: json.dumps(spec.schedule), PAD_KEY: str(PAD_MULTIPLE)}
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
        session = onnx_session(tmp)
        difference = max(max_difference(session, spec.network, spec.inputs),
                         max_difference(session, spec.network, _other_size(spec.inputs, method.spatial_dims)))
        if not difference <= tolerance:
            raise MedtransError(out, f"onnxruntime differs from PyTorch by {difference:.3g} (over "
                                f"{tolerance:g} in normalised units); nothing written",
                                "report it with the run's config; predict with the run itself meanwhile")
    schedule = None
    if spec.schedule:
        schedule = write_json(out.with_suffix(".schedule.json"), spec.schedule, indent=2)
    return difference, schedule


class OnnxTranslation(nn.Module):
    """An exported one-pass network behind the method interface the Predictor calls (onnxruntime, CPU)."""

    default_steps = None  # one network pass: a step count is refused, as by the method it came from
    stochastic = False
    resolve_steps = Method.resolve_steps

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def translate(self, source: Tensor, steps: int | None = None, samples: int = 1,
                  noise: Any = None) -> tuple[Tensor, None]:
        self.resolve_steps(steps)
        array = np.ascontiguousarray(source.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]), None


def onnx_predictor(path: str | os.PathLike, batch_size: int | None = None, tta: bool = False) -> Any:
    """A Predictor whose network is the exported model: the same slicing, padding, TTA and geometry."""
    from medtrans.config import validate_config
    from medtrans.data.plan import Plan
    from medtrans.engine.predictor import Predictor

    path = Path(path)
    session = onnx_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    if PLAN_KEY not in meta or CONFIG_KEY not in meta:
        raise MedtransError(path, "the ONNX model has no medtrans plan and config in its metadata",
                            "export it with medtrans export RUN -o model.onnx")
    if json.loads(meta.get(SCHEDULE_KEY, "{}")):
        raise MedtransError(path, "the model is the step network of a multi-step method",
                            "run its sampling loop with the schedule beside it, or predict with the run")
    config = validate_config(json.loads(meta[CONFIG_KEY]), path)
    plan = Plan.from_dict(json.loads(meta[PLAN_KEY]), path)
    return Predictor.from_parts(OnnxTranslation(path), config, plan, name=path.name, device="cpu",
                                batch_size=batch_size, tta=tta)
