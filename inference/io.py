"""Finding, reading, validating and writing CT volumes."""

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
MAX_SPACING_MM = 100.0  # no CT has voxels a decimetre deep: such a header is broken


class InputError(ValueError):
    """An input that cannot be segmented; the message names the file and the reason."""


def find_inputs(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; hidden files skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUFFIXES)
    )


def case_name(path: Path) -> str:
    """``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001``; ``scan.mha`` -> ``scan``."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix("_0000")


def read_ct(path: Path) -> sitk.Image:
    """Read and validate a 3D scalar CT; raises ``InputError`` naming the file and reason."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else "unreadable"
        raise InputError(f"{path}: cannot read image ({reason})") from e
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {image.GetDimension()}D image, expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel, "
            "expected a scalar CT"
        )
    if min(image.GetSize()) < 2:
        raise InputError(f"{path}: size {image.GetSize()} has an axis under 2 voxels")
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{path}: spacing {spacing} mm is not in (0, {MAX_SPACING_MM:g}]")
    return image


def hu_array(image: sitk.Image, path: Path) -> np.ndarray:
    """The voxels as a ``(z, y, x)`` array; ``InputError`` when any is NaN or infinite."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{path}: voxels hold NaN or infinite values")
    return array


def write_labels(labels: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """Write uint8 ``(z, y, x)`` labels with the reference's geometry; appears atomically."""
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(reference)
    # ITK picks the writer by the name's ending, so the temporary name keeps it.
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{''.join(path.suffixes)}")
    try:
        sitk.WriteImage(out, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
