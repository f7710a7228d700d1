"""Whole-volume translation: a trained run in, a synthetic volume in the source geometry out.

The network only ever sees plain tensors in the plan's model space; geometry and units are handled
by the plan (``to_model_space`` / ``from_model_space``) and written back by ``medtrans.io.save``.
How a volume is covered (slices, 2.5D stacks, 3D windows), how samples are drawn and how their mean
and spread are blended is ``engine.inferers``, shared with validation.

Sampling settings (``steps``, ``samples``, ``seed``, ``tta``) come from the run's ``inference`` block
unless given; with several samples (or TTA) a std map in the target's units is written beside the
prediction, ``<subject>_<target>_std``, marked synthetic as an uncertainty map.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtrans.data.inputs import check_output_folder, check_sources, collect_inputs
from medtrans.data.missing import with_availability
from medtrans.engine.inferers import Inferer, Sampling, build_inferer, method_moments
from medtrans.errors import MedtransError


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedtransError(None, f"device {device!r} asked for but CUDA is not available",
                            "run on the CPU: predict --device cpu, train --set device=cpu "
                            "(or device: auto)")
    return torch.device(device)


def std_output_name(subject: str, target: str) -> str:
    """File stem of the uncertainty map beside ``<subject>``'s prediction."""
    return f"{subject}_{target}_std"


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
    sampling: Sampling = field(default_factory=Sampling)
    amp: bool = False
    memory_format: torch.memory_format | None = None
    #: what ``predict_paths`` wants the user to know (e.g. a subject translated without some sources)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, which: str = "best", device: str = "auto",
                 batch_size: int | None = None, **sampling: Any) -> Predictor:
        """Load ``checkpoints/<which>`` of a run; batch size defaults to the training batch;
        ``sampling`` keywords (steps, samples, seed, tta) override the run's ``inference`` block."""
        from medtrans.engine.run import checkpoint_dir, load_trained

        run_dir = Path(run_dir)
        method, config, plan = load_trained(run_dir, which=which)
        used = checkpoint_dir(run_dir, which).name  # "best" falls back to "last" when never validated
        return cls.from_parts(method, config, plan, name=f"{run_dir.name}:{used}", device=device,
                              batch_size=batch_size, **sampling)

    @classmethod
    def from_parts(cls, method: torch.nn.Module, config: Any, plan: Any, name: str, device: str = "auto",
                   batch_size: int | None = None, steps: int | None = None, samples: int | None = None,
                   seed: int | None = None, tta: bool | None = None) -> Predictor:
        """A predictor for a method already built (``from_run`` and benchmarks): eval mode, on
        ``device``, with the run's AMP and channels-last settings; unset sampling options come from
        the run's ``inference`` block. A step count for a one-pass method is refused here."""
        torch_device = resolve_device(device)
        memory_format = None
        if config.optim.channels_last:  # as trained: the fast CPU path
            memory_format = torch.channels_last_3d if config.data.dims == "3d" else torch.channels_last
        method = method.to(torch_device).eval()
        if memory_format is not None:
            method = method.to(memory_format=memory_format)
        defaults = config.inference
        steps = steps if steps is not None else (defaults.steps if method.default_steps is not None else None)
        method.resolve_steps(steps)  # fail before any input is read
        sampling = Sampling(steps=steps, samples=samples or defaults.samples,
                            seed=defaults.seed if seed is None else seed,
                            tta=defaults.tta if tta is None else tta)
        return cls(
            method=method, config=config, plan=plan, name=name, device=torch_device,
            batch_size=batch_size or max(1, int(config.optim.batch_size)), sampling=sampling,
            amp=bool(config.optim.amp), memory_format=memory_format,
        )

    @property
    def sources(self) -> list[str]:
        return list(self.config.data.sources)

    @property
    def method_name(self) -> str:
        return str(self.config.method.name)

    @property
    def writes_std(self) -> bool:
        """A std map is informative with several stochastic samples or with TTA."""
        return self.sampling.tta or (self.sampling.samples > 1 and bool(self.method.stochastic))

    def inferer(self) -> Inferer:
        cfg = self.config
        return build_inferer(str(cfg.data.dims), int(self.plan.slice_axis), self.batch_size,
                             int(cfg.data.context), cfg.data.patch_size or self.plan.patch_size,
                             cfg.inference.overlap)

    @torch.inference_mode()
    def predict_array(self, array: np.ndarray, progress: Callable[[int], None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-space (C, X, Y, Z) → mean (X, Y, Z) and std (X, Y, Z) or None, as the run was trained."""
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        inferer = self.inferer()
        moments = method_moments(self.method, self.sampling, self.device, self.amp, self.memory_format,
                                 inferer.flip_axes)
        mean, std = inferer(moments, tensor, self.sampling.seed, self.writes_std, progress=progress)
        return mean.numpy(), (None if std is None else std.numpy())

    def predict_subject(self, volumes: dict[str, Any],
                        progress: Callable[[int, int], None] | None = None) -> Any:
        """Synthetic target Volume in original units, on the first source's grid and affine.

        ``progress(done_slices, total_slices)`` is called as batches finish. See
        :meth:`predict_subject_with_std` for the uncertainty map.
        """
        return self.predict_subject_with_std(volumes, progress)[0]

    def predict_subject_with_std(self, volumes: dict[str, Any],
                                 progress: Callable[[int, int], None] | None = None) -> tuple[Any, Any]:
        """(synthetic Volume, std Volume in the target's units or None), both on the source grid."""
        dropout = self.config.data.source_dropout > 0
        missing = [m for m in self.sources if m not in volumes]
        if missing and (not dropout or len(missing) == len(self.sources)):
            raise MedtransError(None, f"missing modality {', '.join(missing)}",
                                f"the model needs {', '.join(self.sources)}" + (
                                    "" if dropout else " (it was not trained with data.source_dropout, "
                                    "so it cannot predict from fewer sources)"))
        present = {m: volumes[m] for m in self.sources if m in volumes}
        array, space = self.plan.to_model_space(present, allow_missing=dropout)
        if dropout:
            array = with_availability(array, [m not in space.missing for m in self.sources])
        total = int(array.shape[1 + int(self.plan.slice_axis)])
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        prediction, std = self.predict_array(array, progress=tick)
        out = self.plan.from_model_space(prediction, space)
        return out, (None if std is None else self.plan.from_model_space(std, space, spread=True))

    def predict_paths(self, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                      fmt: str | None = None,
                      progress: Callable[[str, int, int], None] | None = None,
                      allow_synthetic: bool = False) -> list[Path]:
        """Translate every input and write ``<out_dir>/<subject>.nii.gz`` (or ``<subject>/`` DICOM).

        ``fmt`` is ``"nii"``, ``"dcm"`` or None (DICOM when the input was DICOM, else NIfTI).
        ``progress(subject, done_slices, total_slices)`` is called as slices finish. Every input is
        read and checked (readable, modalities, geometry, not marked synthetic unless
        ``allow_synthetic``) before anything is written; a failed run leaves no new empty ``out_dir``.
        """
        from medtrans.io import SyntheticInfo, load, save

        if fmt not in (None, "nii", "dcm"):
            raise MedtransError(None, f"unknown output format {fmt!r}", "use nii or dcm")
        out_dir = Path(out_dir)
        check_output_folder(out_dir, [])
        inputs = list(inputs)
        resolved = collect_inputs(inputs, self.sources, optional=self.config.data.source_dropout > 0)
        ids = [subject for subject, _, _ in resolved]
        if len(set(ids)) != len(ids):
            dup = sorted({s for s in ids if ids.count(s) > 1})
            raise MedtransError(out_dir, f"two inputs give the same output name {', '.join(dup)}",
                                "rename the inputs or translate them into different output folders")
        inputs = [*map(Path, inputs), *(p for _, paths, _ in resolved for p in paths.values())]
        check_output_folder(out_dir, inputs)
        for _, paths, _ in resolved:  # read everything once before writing anything
            check_sources({m: load(p, modality=m) for m, p in paths.items()}, paths, allow_synthetic)
        created = not out_dir.exists()
        written = []
        try:
            for subject, paths, is_dicom in resolved:
                volumes = {m: load(p, modality=m) for m, p in paths.items()}
                first = next(m for m in self.sources if m in volumes)
                reference = volumes[first]
                tick = None if progress is None else functools.partial(progress, subject)
                synthetic, std = self.predict_subject_with_std(volumes, progress=tick)
                as_dicom = fmt == "dcm" or (fmt is None and is_dicom)
                target = out_dir / subject if as_dicom else out_dir / f"{subject}.nii.gz"
                missing = [m for m in self.sources if m not in volumes]
                method = self.method_name + (f" (sources missing: {', '.join(missing)})" if missing else "")
                if missing:
                    self.notes.append(f"{subject}: translated without {', '.join(missing)} (absent; the run "
                                      "was trained with source dropout)")
                info = SyntheticInfo(model=self.name, source=str(paths[first]), method=method,
                                     target=self.plan.target)
                written.append(Path(save(synthetic, target, reference=reference, synthetic=info)))
                if std is not None:
                    std_name = std_output_name(subject, self.plan.target)
                    std_path = out_dir / std_name if as_dicom else out_dir / f"{std_name}.nii.gz"
                    spread = f"std of {self.sampling.samples} samples" + (" + flip TTA" if self.sampling.tta
                                                                          else "")
                    std_info = SyntheticInfo(model=self.name, source=str(paths[first]),
                                             method=f"{method} {spread}", target=f"{self.plan.target}_std")
                    written.append(Path(save(std, std_path, reference=reference, synthetic=std_info)))
        except BaseException:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            raise
        return written

