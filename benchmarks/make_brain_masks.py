"""Brain masks (CSF, grey and white matter, lesions) of a phantom dataset, for evaluating inside the brain.

Writes ``OUT/<subject>.nii.gz`` from each ``DATA/<subject>/labels.nii.gz`` with ``demo.brain_mask``
(the demo's evaluation mask); a benchmark spec points ``data.mask`` at OUT.
Run: ``.venv/bin/python benchmarks/make_brain_masks.py data/benchmark_mni data/benchmark_mni_brain``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrans.demo import brain_mask
from medtrans.io import Volume, load, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for subject in sorted(p for p in args.data.iterdir() if (p / "labels.nii.gz").is_file()):
        labels = load(subject / "labels.nii.gz")
        save(Volume(brain_mask(labels.array), labels.affine, {"modality": "mask", "units": "label"}),
             args.out / f"{subject.name}.nii.gz")
    print(f"brain masks of {args.data} → {args.out}")


if __name__ == "__main__":
    main()
