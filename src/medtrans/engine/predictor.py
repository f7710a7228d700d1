"""Whole-volume translation: a trained run in, a synthetic volume in the source geometry out.

The network only ever sees plain tensors in the plan's model space; geometry and units are handled
by the plan (``to_model_space`` / ``from_model_space``) and written back by ``medtrans.io.save``.
Three ways to cover a volume, matching how the run was trained (``data.dims``):

- ``2d``: slices along the plan's slice axis, in batches;
- ``2.5d``: the same, each slice with ``context`` neighbours on each side stacked as channels per
  source modality, the ends replicated;
- ``3d``: a sliding window of ``data.patch_size`` with Gaussian blending of overlapping patches
  (``monai.inferers.sliding_window_inference``, ``mode="gaussian"``, overlap 0.5).

Test-time augmentation averages the predictions of the input flipped along the in-plane axes (each
output is flipped back before averaging).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medtrans.data.modalities import canonical, is_known
from medtrans.errors import MedtransError

Net = Callable[[Tensor], Tensor]

#: in-plane sizes are padded to a multiple of this, so every U-Net depth up to 5 fits
PAD_MULTIPLE = 32
#: file name endings ``medtrans.io.load`` reads as one image
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".png", ".tif", ".tiff",
                  ".dcm")


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedtransError(None, f"device {device!r} asked for but CUDA is not available",
                            "use --device cpu or --device auto")
    return torch.device(device)


def flip_tta(net: Net, axes: Sequence[int]) -> Net:
    """``net`` averaged over every combination of flips along tensor ``axes`` (2**len(axes) passes).

    Each flipped input's output is flipped back before averaging, so the result is aligned with the
    input; for an equivariant network the average equals the plain output.
    """
    combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    def averaged(x: Tensor) -> Tensor:
        total = None
        for dims in combos:
            y = net(torch.flip(x, dims)) if dims else net(x)
            y = torch.flip(y, dims) if dims else y
            total = y.float() if total is None else total + y.float()
        return total / len(combos)

    return averaged


def _pad_to_multiple(x: Tensor, multiple: int, dims: int) -> tuple[Tensor, list[int]]:
    """Replicate-pad the last ``dims`` axes of ``x`` up to a multiple; returns the original sizes."""
    sizes = list(x.shape[-dims:])
    pad: list[int] = []
    for size in reversed(sizes):
        pad += [0, (-size) % multiple]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x, sizes


def context_stack(array: Tensor, index: Tensor, context: int) -> Tensor:
    """2.5D inputs for slices ``index`` of ``array`` (C, S, H, W): (len(index), C*(2*context+1), H, W).

    Channels are grouped per source modality (modality 0's stack, then modality 1's …), slices
    ordered from ``s - context`` to ``s + context``; indices past either end repeat the end slice.
    ``context=0`` gives plain 2D slices (B, C, H, W).
    """
    offsets = torch.arange(-context, context + 1)
    neighbours = (index[:, None] + offsets[None, :]).clamp(0, array.shape[1] - 1)  # (B, context)
    stacked = array[:, neighbours]  # (C, B, context, H, W)
    return stacked.permute(1, 0, 2, 3, 4).reshape(len(index), -1, *array.shape[2:])


def infer_slices(net: Net, array: Tensor, slice_axis: int, batch_size: int, context: int = 0,
                 device: torch.device | None = None, tta: bool = False,
                 progress: Callable[[int], None] | None = None) -> Tensor:
    """2D / 2.5D prediction of a whole model-space array (C, X, Y, Z) → (X, Y, Z), slice by slice.

    Slices along ``slice_axis`` go through ``net`` ``batch_size`` at a time (``context`` > 0 stacks
    that many neighbours on each side as channels); in-plane sizes are replicate-padded to a multiple
    of 32 and cropped back.
    """
    device = device or array.device
    moved = torch.movedim(array, 1 + slice_axis, 1)  # (C, S, H, W)
    padded, (height, width) = _pad_to_multiple(moved, PAD_MULTIPLE, 2)
    run = flip_tta(net, (2, 3)) if tta else net
    n_slices = padded.shape[1]
    out = torch.empty(n_slices, height, width, dtype=torch.float32)
    for start in range(0, n_slices, batch_size):
        index = torch.arange(start, min(start + batch_size, n_slices))
        pred = run(context_stack(padded, index, context).to(device))
        out[index] = pred[:, 0, :height, :width].float().cpu()
        if progress is not None:
            progress(len(index))
    return torch.movedim(out, 0, slice_axis)


def infer_window(net: Net, array: Tensor, patch_size: Sequence[int], batch_size: int,
                 slice_axis: int = 2, device: torch.device | None = None, tta: bool = False,
                 overlap: float = 0.5) -> Tensor:
    """3D prediction of a model-space array (C, X, Y, Z) → (X, Y, Z) by sliding ``patch_size`` windows.

    Overlapping windows are blended with a Gaussian weight (MONAI ``sliding_window_inference``,
    ``mode="gaussian"``); a volume smaller than the patch is replicate-padded. TTA flips the
    in-plane axes, i.e. the two axes other than ``slice_axis``.
    """
    from monai.inferers import sliding_window_inference

    device = device or array.device
    in_plane = tuple(2 + ax for ax in range(3) if ax != slice_axis)
    run = flip_tta(net, in_plane) if tta else net

    def window(x: Tensor) -> Tensor:
        return run(x.to(device)).float()

    out = sliding_window_inference(
        array[None].float(), roi_size=list(patch_size), sw_batch_size=batch_size, predictor=window,
        overlap=overlap, mode="gaussian", padding_mode="replicate", sw_device=device,
        device=torch.device("cpu"),
    )
    return out[0, 0].float()


def resolve_inputs(path: Path, modalities: Sequence[str]) -> tuple[str, dict[str, Path], bool]:
    """Which files of ``path`` feed the model: (subject id, modality → path, input is DICOM).

    ``path`` is an image file (single-source models), a DICOM series folder (single-source), or a
    subject folder holding ``<modality>.<ext>`` files or ``<modality>/`` DICOM folders.
    """
    path = Path(path)
    if not path.exists():
        raise MedtransError(path, "input does not exist", "give an image file, a subject folder or a "
                            "DICOM series folder")
    single = modalities[0] if len(modalities) == 1 else None
    if path.is_file():
        stem = _strip_suffix(path.name)
        if stem is None:
            raise MedtransError(path, "not an image file", f"give a file ending in one of "
                                f"{', '.join(IMAGE_SUFFIXES)}, a subject folder or a DICOM folder")
        if single is None:
            raise MedtransError(path, f"the model needs {', '.join(modalities)} but got one file",
                                f"give a subject folder with {', '.join(m + '.nii.gz' for m in modalities)}")
        if is_known(stem):  # <subject>/<modality>.nii.gz: the folder names the subject
            if canonical(stem) != canonical(single):
                raise MedtransError(path, f"the file name says {canonical(stem)} but the model translates "
                                    f"{single}", f"give the {single} image")
            stem = path.parent.name
        return stem, {single: path}, _is_dicom(path)
    found = {m: p for m in modalities if (p := _find_modality(path, m)) is not None}
    if len(found) == len(modalities):
        return path.name, found, all(p.is_dir() or p.suffix.lower() == ".dcm" for p in found.values())
    if _has_dicom(path):
        if single is None:
            raise MedtransError(path, f"a single DICOM series but the model needs {', '.join(modalities)}",
                                f"give a subject folder with one sub-folder per modality: "
                                f"{', '.join(m + '/' for m in modalities)}")
        return path.name, {single: path}, True
    missing = [m for m in modalities if m not in found]
    raise MedtransError(path, f"missing modality {', '.join(missing)} (the model needs "
                        f"{', '.join(modalities)})", f"add {', '.join(m + '.nii.gz' for m in missing)} "
                        "to the subject folder")


def _strip_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _find_modality(folder: Path, modality: str) -> Path | None:
    """``<modality>.<ext>`` or a ``<modality>/`` DICOM folder, any spelling of the name (T1w, t1n …)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and canonical(entry.name) == canonical(modality):
            return entry
        stem = _strip_suffix(entry.name)
        if entry.is_file() and stem is not None and canonical(stem) == canonical(modality):
            return entry
    return None


def collect_inputs(paths: Iterable[str | os.PathLike], modalities: Sequence[str]
                   ) -> list[tuple[str, dict[str, Path], bool]]:
    """:func:`resolve_inputs` for every path; a dataset root (a folder of subject folders) stands for
    all its subjects that hold every needed modality."""
    found = []
    for path in map(Path, paths):
        try:
            found.append(resolve_inputs(path, modalities))
        except MedtransError:
            folders = sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []
            subjects = [d for d in folders if all(_find_modality(d, m) is not None for m in modalities)]
            if not subjects:
                raise
            found.extend(resolve_inputs(d, modalities) for d in subjects)
    return found


def _is_dicom(path: Path) -> bool:
    from medtrans.io.dicom import is_dicom_file  # lazy: importing the predictor stays free of pydicom

    return path.suffix.lower() == ".dcm" or is_dicom_file(path)


def _has_dicom(folder: Path) -> bool:
    return any(p.is_file() and _is_dicom(p) for p in folder.iterdir())


@dataclass
class Predictor:
    """A trained method ready to translate whole volumes.

    Build it with :meth:`from_run`; ``predict_subject`` maps volumes to a synthetic volume,
    ``predict_paths`` reads inputs from disk and writes the outputs marked synthetic.
    """

    method: torch.nn.Module
    config: Any
    plan: Any
    name: str
    device: torch.device
    batch_size: int = 8
    tta: bool = False
    amp: bool = False
    memory_format: torch.memory_format | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, which: str = "best", device: str = "auto",
                 batch_size: int | None = None, tta: bool = False) -> Predictor:
        """Load ``checkpoints/<which>`` of a run; batch size defaults to the training batch."""
        from medtrans.engine.run import checkpoint_dir, load_trained

        run_dir = Path(run_dir)
        method, config, plan = load_trained(run_dir, which=which)
        used = checkpoint_dir(run_dir, which).name  # "best" falls back to "last" when never validated
        return cls.from_parts(method, config, plan, name=f"{run_dir.name}:{used}", device=device,
                              batch_size=batch_size, tta=tta)

    @classmethod
    def from_parts(cls, method: torch.nn.Module, config: Any, plan: Any, name: str, device: str = "auto",
                   batch_size: int | None = None, tta: bool = False) -> Predictor:
        """A predictor for a method already built (``from_run`` and benchmarks): eval mode, on
        ``device``, with the run's AMP and channels-last settings."""
        torch_device = resolve_device(device)
        memory_format = None
        if config.optim.channels_last:  # as trained: the fast CPU path
            memory_format = torch.channels_last_3d if config.data.dims == "3d" else torch.channels_last
        method = method.to(torch_device).eval()
        if memory_format is not None:
            method = method.to(memory_format=memory_format)
        return cls(
            method=method, config=config, plan=plan, name=name, device=torch_device,
            batch_size=batch_size or max(1, int(config.optim.batch_size)), tta=tta,
            amp=bool(config.optim.amp), memory_format=memory_format,
        )

    @property
    def sources(self) -> list[str]:
        return list(self.config.data.sources)

    @property
    def method_name(self) -> str:
        return str(self.config.method.name)

    def _net(self, x: Tensor) -> Tensor:
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext())
        with autocast:
            prediction, _ = self.method.translate(x)
        return prediction.float()

    @torch.inference_mode()
    def predict_array(self, array: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Model-space (C, X, Y, Z) → (X, Y, Z), by the way the run was trained."""
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        dims = str(self.config.data.dims)
        slice_axis = int(self.plan.slice_axis)
        if dims == "3d":
            patch = self.config.data.patch_size or self.plan.patch_size
            out = infer_window(self._net, tensor, patch, self.batch_size,
                               slice_axis=slice_axis, device=self.device, tta=self.tta)
            if progress is not None:
                progress(tensor.shape[1 + slice_axis])
        else:
            context = int(self.config.data.context) if dims == "2.5d" else 0
            out = infer_slices(self._net, tensor, slice_axis, self.batch_size, context=context,
                               device=self.device, tta=self.tta, progress=progress)
        return out.numpy()

    def predict_subject(self, volumes: dict[str, Any],
                        progress: Callable[[int, int], None] | None = None) -> Any:
        """Synthetic target Volume in original units, on the first source's grid and affine.

        ``progress(done_slices, total_slices)`` is called as batches finish.
        """
        missing = [m for m in self.sources if m not in volumes]
        if missing:
            raise MedtransError(None, f"missing modality {', '.join(missing)}",
                                f"the model needs {', '.join(self.sources)}")
        array, space = self.plan.to_model_space({m: volumes[m] for m in self.sources})
        total = int(array.shape[1 + int(self.plan.slice_axis)])
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        prediction = self.predict_array(array, progress=tick)
        return self.plan.from_model_space(prediction, space)

    def predict_paths(self, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                      fmt: str | None = None,
                      progress: Callable[[str, int, int], None] | None = None,
                      part: tuple[int, int] = (0, 1)) -> list[Path]:
        """Translate every input and write ``<out_dir>/<subject>.nii.gz`` (or ``<subject>/`` DICOM).

        ``fmt`` is ``"nii"``, ``"dcm"`` or None (DICOM when the input was DICOM, else NIfTI).
        ``progress(subject, done_slices, total_slices)`` is called as slices finish.
        ``part=(k, n)`` translates only every n-th subject from the k-th (one process of n, e.g. a
        torchrun rank): the n parts are disjoint and together are all subjects.
        """
        from medtrans.io import SyntheticInfo, load, save

        if fmt not in (None, "nii", "dcm"):
            raise MedtransError(None, f"unknown output format {fmt!r}", "use nii or dcm")
        out_dir = Path(out_dir)
        resolved = collect_inputs(inputs, self.sources)
        ids = [subject for subject, _, _ in resolved]
        if len(set(ids)) != len(ids):
            dup = sorted({s for s in ids if ids.count(s) > 1})
            raise MedtransError(out_dir, f"two inputs give the same output name {', '.join(dup)}",
                                "rename the inputs or translate them into different output folders")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for subject, paths, is_dicom in resolved[part[0]::part[1]]:
            volumes = {m: load(p, modality=m) for m, p in paths.items()}
            reference = volumes[self.sources[0]]
            tick = None if progress is None else functools.partial(progress, subject)
            synthetic = self.predict_subject(volumes, progress=tick)
            as_dicom = fmt == "dcm" or (fmt is None and is_dicom)
            target = out_dir / subject if as_dicom else out_dir / f"{subject}.nii.gz"
            info = SyntheticInfo(model=self.name, source=str(paths[self.sources[0]]), method=self.method_name,
                                 target=self.plan.target)
            written.append(Path(save(synthetic, target, reference=reference, synthetic=info)))
        return written

