"""Registration cost: rigid T1→T2 per subject at 128×128×96; data preparation with and without it.

Measured in one run on a phantom whose T2 is misaligned by up to ``--misalign`` (default 4 mm, 4°):
(a) ``registration.register`` alone (rigid, mutual information, the plan's defaults) per subject,
with the mean target registration error over the mask against the transform the phantom applied;
(b) ``PreparedCache`` for all subjects (load, resample, normalise, write .npy) with a plan without
registration, the reference; (c) the same with ``registration: rigid`` (register + alignment QA);
(d) optionally (``--n4``) with N4 on both MR images as well. Wall-clock and CPU seconds (this
process, ITK's threads included): on a shared machine the wall clock includes waiting for other jobs,
CPU seconds / 2 is about the wall time on 2 free cores. Printed: medians per subject, totals, and the
ratio of (c) and (d) to (b).
Run: ``.venv/bin/python benchmarks/bench_registration.py --subjects 20`` (a few minutes on 2 free cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medtrans.data import registration as reg
from medtrans.data.layouts import open_dataset
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.data.plan import make_plan
from medtrans.data.prepare import PreparedCache
from medtrans.io import load
from medtrans.io.geometry import resample_like


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--size", default="128x128x96")
    parser.add_argument("--misalign", default="4,4")
    parser.add_argument("--n4", action="store_true", help="also time preparation with N4 on t1 and t2")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    mm, deg = (float(v) for v in args.misalign.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench_registration_"))
    try:
        root = write_phantom(
            work / "ph",
            PhantomSpec(size=size, modalities=("t1", "t2"), seed=0, misalign=(mm, deg)),
            args.subjects,
            workers=2,
        )
        meta = json.loads((root / "dataset.json").read_text())
        ds = open_dataset(root)
        walls, cpus, tres = [], [], []
        for sid in ds.ids:
            rec = ds.subject(sid)
            t1, t2, mask = load(rec.images["t1"]), load(rec.images["t2"]), load(rec.mask)
            estimate, wall, cpu = timed(lambda t1=t1, t2=t2: reg.register(t2, t1, "rigid", "mi"))
            truth = np.linalg.inv(np.array(meta["subjects"][sid]["misalignment"]["t2"]["matrix"]))
            moved_mask = np.asarray(resample_like(mask, t2, order=0, transform=truth).array) > 0
            tres.append(
                reg.target_registration_error(estimate, truth, reg.world_points(moved_mask, t2.affine))
            )
            walls.append(wall)
            cpus.append(cpu)
        print(f"{args.subjects} subjects {args.size}, T2 misaligned up to {mm:g} mm / {deg:g}°")
        print(
            f"(a) register t1→t2 rigid: median {statistics.median(walls):.2f} s wall, "
            f"{statistics.median(cpus):.2f} s CPU per subject; TRE median {statistics.median(tres):.2f} mm, "
            f"max {max(tres):.2f} mm"
        )
        results = {}
        variants = [("none", {}), ("rigid", {"registration": "rigid"})]
        if args.n4:
            variants.append(("rigid+n4", {"registration": "rigid", "bias_correction": ["t1", "t2"]}))
        for name, options in variants:
            plan = make_plan(ds, ["t1"], "t2", dims="2d", max_intensity_subjects=4, **options)
            _, wall, cpu = timed(lambda plan=plan, name=name: PreparedCache(ds, plan, work / f"cache-{name}"))
            results[name] = (wall, cpu)
            print(
                f"({'bcd'[len(results) - 1]}) prepare {args.subjects} subjects, registration {name}: "
                f"{wall:.1f} s wall, {cpu:.1f} s CPU"
            )
        base_wall, base_cpu = results["none"]
        for name in results:
            if name != "none":
                print(
                    f"ratio {name} / none: {results[name][0] / base_wall:.2f}× wall, "
                    f"{results[name][1] / base_cpu:.2f}× CPU"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
