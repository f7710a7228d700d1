"""``medtrans demo``: the whole path on simulated brains with real anatomy, in minutes on a laptop CPU.

phantom (the ``mni`` anatomy: ICBM152 grey and white matter under a random deformation, at 2 mm; a slab
of axial slices through the ventricles keeps it fast) → train ``regression``, ``pix2pix`` and ``flow``
(a few-step generative model: 10 Euler steps, a mean of 4 samples and their std map) T1→T2 (recipes in
``configs/``, shortened) → translate the test subjects as NIfTI → evaluate (``default`` preset inside
the brain) → HTML report, with two linear baselines next to the models, both per subject and inside the
brain mask: the source rescaled so that its minimum and maximum map to the target's (the issue's trivial
baseline), and the least-squares linear fit of the target on the source (an oracle: it uses the target,
so it is the best any linear intensity map can do). A model that does not clearly beat them has learnt
nothing about contrast.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtrans.data.phantom import LABELS
from medtrans.errors import MedtransError

#: label indices of the phantom's brain tissues in labels.nii.gz
BRAIN_LABELS = tuple(LABELS.index(name) for name in ("csf", "gm", "wm", "lesion"))
#: recipe and demo-specific overrides per model; pix2pix's GAN lr (2e-4) needs thousands of steps, 1e-3
#: reaches the regression's validation PSNR in 250 (measured, docs/PREDICT.md); flow keeps its recipe's
#: 10 Euler steps; 4 samples (mean + std map), not 8: prediction, not training, is what outgrew the budget
RECIPES = {"regression": ("phantom_t1_t2_regression.yaml", []),
           "pix2pix": ("phantom_t1_t2_pix2pix.yaml", ["optim.lr=1e-3"]),
           "flow": ("phantom_t1_t2_flow.yaml", [])}
#: models that draw samples: the report shows their std map
SAMPLED = ("flow",)
MARKER = ".medtrans-demo"
BASELINE = "baseline min-max"
FIT = "baseline linear fit"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: anatomy, subjects, grid and voxel size, training length, flow's sampling."""

    anatomy: str
    subjects: int
    size: tuple[int, int, int]
    voxel_mm: float
    steps: dict[str, int]
    batch_size: int
    validate_every: int
    samples: int


#: ≤ 5 minutes on 2 CPU cores (measured in docs/PREDICT.md): 12 heads, 96×112 in-plane at 2 mm (the whole
#: head), 24 axial slices (48 mm through the ventricles)
FULL = DemoSize(anatomy="mni", subjects=12, size=(96, 112, 24), voxel_mm=2.0,
                steps={"regression": 400, "pix2pix": 400, "flow": 500}, batch_size=4, validate_every=200,
                samples=4)
#: the test suite's variant: same path, tiny everything; the procedural brain (the template maps take
#: seconds to load per process), 12 slices: room for the 3D SSIM window
QUICK = DemoSize(anatomy="brain", subjects=5, size=(32, 32, 12), voxel_mm=7.5,
                 steps={"regression": 10, "pix2pix": 10, "flow": 10}, batch_size=4, validate_every=10,
                 samples=2)


@dataclass
class DemoResult:
    """Where everything went and the per-model mean metrics over the test subjects."""

    out: Path
    data: Path
    runs: dict[str, Path]
    predictions: dict[str, Path]
    evaluations: dict[str, Path]
    report: Path
    test_subjects: list[str]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def configs_dir() -> Path:
    """The recipes folder of the source tree (``configs/`` beside ``src/``)."""
    folder = Path(__file__).resolve().parents[2] / "configs"
    if not (folder / RECIPES["regression"][0]).is_file():
        raise MedtransError(folder, "the recipes folder configs/ is not there",
                            "run the demo from a source checkout (pip install -e .)")
    return folder


def brain_mask(labels: np.ndarray) -> np.ndarray:
    """1 inside CSF, grey and white matter and lesions of the phantom, 0 elsewhere."""
    return np.isin(np.rint(labels).astype(int), BRAIN_LABELS).astype(np.uint8)


def linear_rescale(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The source mapped linearly so its [min, max] inside ``mask`` becomes the target's [min, max]."""
    inside = mask > 0
    s_lo, s_hi = float(source[inside].min()), float(source[inside].max())
    t_lo, t_hi = float(target[inside].min()), float(target[inside].max())
    scale = (t_hi - t_lo) / (s_hi - s_lo) if s_hi > s_lo else 0.0
    return ((source - s_lo) * scale + t_lo).astype(np.float32)


def linear_fit(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a * source + b`` with (a, b) the least-squares fit of the target inside ``mask``."""
    inside = mask > 0
    a, b = np.polyfit(source[inside].astype(np.float64), target[inside].astype(np.float64), 1)
    return (a * source + b).astype(np.float32)


#: name -> (folder, function, how it was made)
BASELINES = {BASELINE: ("baseline-minmax", linear_rescale, "min-max in brain"),
             FIT: ("baseline-linfit", linear_fit, "least-squares fit in brain (oracle)")}


def _timed(seconds: dict[str, float], key: str, start: float) -> float:
    now = time.perf_counter()
    seconds[key] = now - start
    return now


def run_demo(out: str | Path = "medtrans-demo", quick: bool = False,
             say: Callable[[str], None] = print, progress: bool = True) -> DemoResult:
    """Run the whole demo into ``out``: a new or empty folder, or one a previous demo wrote (replaced)."""
    from medtrans.config import load_config
    from medtrans.data.phantom import PhantomSpec, write_phantom
    from medtrans.engine.evaluator import evaluate
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.trainer import train
    from medtrans.io import SyntheticInfo, Volume, load, save
    from medtrans.report import ModelResult, SubjectView, write_report
    from medtrans.report.collect import std_beside

    size = QUICK if quick else FULL
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise MedtransError(out, "is not empty and was not written by medtrans demo",
                                "give a new or empty --out folder")
        shutil.rmtree(out)  # our own previous demo: `make demo` twice just runs it again
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by medtrans demo; the next demo into this folder replaces it\n")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    data = out / "data"
    say(f"1/5 phantom: {size.subjects} heads {size.size[0]}×{size.size[1]}×{size.size[2]} at "
        f"{size.voxel_mm:g} mm ({size.anatomy} anatomy; T1, T2) → {data}")
    # one worker: the template maps load once per process and cost more than simulating a slab
    write_phantom(data, PhantomSpec(anatomy=size.anatomy, size=size.size, modalities=("t1", "t2"), seed=0,
                                    voxel_mm=size.voxel_mm), size.subjects, dims=3, workers=1)
    masks = out / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for subject in sorted(p for p in data.iterdir() if p.is_dir()):
        labels = load(subject / "labels.nii.gz")
        save(Volume(brain_mask(labels.array), labels.affine, {"modality": "mask", "units": "label"}),
             masks / f"{subject.name}.nii.gz")
    clock = _timed(seconds, "phantom", clock)

    runs: dict[str, Path] = {}
    for name, (recipe, extra) in RECIPES.items():
        say(f"2/5 train {name} T1→T2, {size.steps[name]} steps")
        overrides = [f"data.root={data}", f"name={name}",
                     f"optim.steps={size.steps[name]}", f"optim.batch_size={size.batch_size}",
                     # EMA (0.995) over so few steps would still carry much of the random init
                     "optim.warmup=0", "optim.ema=null", f"validation.every={size.validate_every}",
                     f"checkpoint.every={size.validate_every}", "logging.tensorboard=false",
                     f"logging.progress={str(progress).lower()}", "device=cpu", *extra]
        if name in SAMPLED:
            overrides.append(f"inference.samples={size.samples}")
        runs[name] = Path(train(load_config(configs_dir() / recipe, overrides), run_dir=out / "runs" / name))
        clock = _timed(seconds, f"train {name}", clock)

    test = _test_subjects(runs)
    say(f"3/5 translate {len(test)} test subjects: {', '.join(test)}")
    predictions: dict[str, Path] = {}
    for name, run_dir in runs.items():
        predictor = Predictor.from_run(run_dir, device="cpu")
        predictions[name] = out / "predictions" / name
        predictor.predict_paths([data / s for s in test], predictions[name], fmt="nii")
    # each test subject's T1, T2 and mask, read once for both baselines and the report
    volumes = {s: (load(data / s / "t1.nii.gz"), load(data / s / "t2.nii.gz"), load(masks / f"{s}.nii.gz"))
               for s in test}
    for name, (folder, fn, how) in BASELINES.items():
        predictions[name] = out / "predictions" / folder
        predictions[name].mkdir(parents=True, exist_ok=True)
        for subject in test:
            t1, t2, mask_volume = volumes[subject]
            mask = mask_volume.array
            info = SyntheticInfo(model=folder, source=str(data / subject / "t1.nii.gz"), method=how,
                                 target="t2")
            save(t1.with_array(fn(t1.array, t2.array, mask), modality="t2"),
                 predictions[name] / f"{subject}.nii.gz", synthetic=info)
    clock = _timed(seconds, "predict", clock)

    say("4/5 evaluate (preset default, inside the brain mask)")
    evaluations, models, scores = {}, [], {}
    for name, folder in predictions.items():
        evaluations[name] = out / "evaluation" / folder.name
        result = evaluate(folder, data, mask=masks, preset="default", ref_modality="t2")
        result.write(evaluations[name])
        models.append(ModelResult(name, [{"subject": s, **v} for s, v in result.per_subject.items()]))
        scores[name] = {m: float(result.summary["metrics"][m]["mean"]) for m in ("psnr", "ssim", "mae")}
    clock = _timed(seconds, "evaluate", clock)

    say("5/5 report")
    views = [SubjectView(s, volumes[s][0], {n: load(predictions[n] / f"{s}.nii.gz") for n in predictions},
                         target=volumes[s][1], mask=volumes[s][2],
                         std={n: load(p) for n in SAMPLED
                              if (p := std_beside(predictions[n] / f"{s}.nii.gz", s)) is not None})
             for s in test]
    report = write_report(out / "report.html", models, views, title="medtrans demo: T1 → T2 on the phantom",
                          max_slices=8,  # 24 slices made a 7 MB page; 8 give 2.5 MB (measured)
                          notes=[f"{len(test)} test subjects. Baselines, per subject inside the brain mask: "
                                 "T1 min-max mapped linearly onto the T2 min-max; least-squares linear fit "
                                 "of T2 on T1 (an oracle: it uses the target).",
                                 f"flow: the mean of {size.samples} samples (10 Euler steps each); its std "
                                 "map (per voxel, over the samples) shares the error maps' scale."])
    _timed(seconds, "report", clock)
    return DemoResult(out=out, data=data, runs=runs, predictions=predictions, evaluations=evaluations,
                      report=report, test_subjects=test, scores=scores, seconds=seconds)


def _test_subjects(runs: dict[str, Path]) -> list[str]:
    """The test split, which every run of the demo shares (same subjects, same seed)."""
    import json

    splits = [json.loads((run / "splits.json").read_text())["test"] for run in runs.values()]
    if any(s != splits[0] for s in splits):
        raise MedtransError(None, "the demo runs split the subjects differently", "report this as a bug")
    return list(splits[0])
