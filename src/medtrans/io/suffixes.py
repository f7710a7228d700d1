"""The file endings ``medtrans.io.load`` reads as one image: the one list every file finder uses.

Kept in a module of its own, free of readers, so that finding files (layouts, predictor, evaluator)
does not import nibabel, pydicom or SimpleITK.
"""

from __future__ import annotations

# longest first so `.nii.gz` wins over `.gz`
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".png", ".tiff", ".tif",
                  ".dcm")


def split_image_name(name: str) -> tuple[str, str] | None:
    """('t1', '.nii.gz') for 't1.nii.gz' (extension lowercased); None when ``name`` is not an image
    file name medtrans reads (or is nothing but the extension)."""
    lower = name.lower()
    for ext in IMAGE_SUFFIXES:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None
