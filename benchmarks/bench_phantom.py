"""Phantom speed: 20 subjects of 128×128×96, all ten modalities, against the goal and plain nibabel writes.

Measured in one run: (a) ``write_phantom`` end to end (simulate + write 12 NIfTI files per subject,
``--workers`` processes); (b) the reference: writing the very same arrays with ``nibabel.save``
alone, one process (the floor for writing gzipped NIfTI). Both as wall-clock seconds and as CPU
seconds (this process and its workers, from ``getrusage``): on a shared machine the wall clock
includes waiting for other people's jobs, while CPU seconds / 2 is the wall time on 2 free cores.
Printed: medians of ``--repeats`` and the ratios against the goal budget of 30 s (≤ 1 meets it)
and against the nibabel-only writes.
Run: ``.venv/bin/python benchmarks/bench_phantom.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib

from medtrans.data.phantom import MODALITIES, PhantomSpec, simulate, write_phantom

GOAL_S = 30.0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--size", default="128x128x96")
    parser.add_argument("--anatomy", default="brain")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    spec = PhantomSpec(anatomy=args.anatomy, size=size, modalities=MODALITIES, seed=0)
    work = Path(tempfile.mkdtemp(prefix="bench_phantom_"))
    try:
        phantom_s, nibabel_s, phantom_cpu, nibabel_cpu = [], [], [], []
        for r in range(args.repeats):
            out = work / f"phantom{r}"
            start, cpu = time.perf_counter(), cpu_seconds()
            write_phantom(out, spec, args.subjects, workers=args.workers)
            phantom_s.append(time.perf_counter() - start)
            phantom_cpu.append(cpu_seconds() - cpu)
            # reference: the same arrays written by nibabel alone (simulation excluded from the clock)
            ref, spent, spent_cpu = work / f"nibabel{r}", 0.0, 0.0
            for i in range(args.subjects):
                subject = simulate(spec, i)
                folder = ref / f"sub-{i:03d}"
                folder.mkdir(parents=True)
                arrays = {**subject.images, "mask": subject.mask, "labels": subject.labels}
                start, cpu = time.perf_counter(), cpu_seconds()
                for name, array in arrays.items():
                    nib.save(nib.Nifti1Image(array, spec.affine), str(folder / f"{name}.nii.gz"))
                spent += time.perf_counter() - start
                spent_cpu += cpu_seconds() - cpu
            nibabel_s.append(spent)
            nibabel_cpu.append(spent_cpu)
            shutil.rmtree(out)
            shutil.rmtree(ref)
        p, n = statistics.median(phantom_s), statistics.median(nibabel_s)
        pc, nc = statistics.median(phantom_cpu), statistics.median(nibabel_cpu)
        print(f"phantom: {args.subjects} {args.anatomy} subjects {args.size}, {len(MODALITIES)} modalities, "
              f"{args.workers} workers, median of {args.repeats}")
        print(f"  medtrans phantom (simulate + write)  wall {p:7.2f} s   CPU {pc:7.2f} s")
        print(f"  nibabel.save of the same arrays      wall {n:7.2f} s   CPU {nc:7.2f} s   (write only)")
        print(f"  ratio phantom wall / goal {GOAL_S:.0f} s         {p / GOAL_S:6.2f}   (<= 1 meets the goal)")
        print(f"  ratio phantom CPU/2 cores / goal     {pc / 2 / GOAL_S:6.2f}   (wall time on 2 free cores)")
        print(f"  ratio phantom / nibabel writes (CPU) {pc / nc:6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
