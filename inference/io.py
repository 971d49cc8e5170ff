"""Finding, reading, validating and writing CT volumes."""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
MAX_SPACING_MM = 100.0  # no CT has voxels a decimetre deep: such a header is broken


class InputError(ValueError):
    """An input that cannot be segmented; the message names the file and the reason."""


def dicom_series(folder: Path) -> list[str]:
    """Series instance UIDs of the DICOM files directly in ``folder``."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def find_inputs(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders holding DICOM, sorted by name.

    Not recursive beyond one level; hidden entries are skipped.
    """
    found = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(SUFFIXES):
            found.append(p)
        elif p.is_dir() and dicom_series(p):
            found.append(p)
    return sorted(found)


def case_name(path: Path) -> str:
    """``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001``; ``scan.mha`` -> ``scan``.

    A DICOM folder is named after the folder.
    """
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix("_0000")


def _read_series(folder: Path) -> sitk.Image:
    series = dicom_series(folder)
    if len(series) != 1:
        raise InputError(f"{folder}: holds {len(series)} DICOM series, expected one")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def read_ct(path: Path) -> sitk.Image:
    """Read and validate a 3D scalar CT; raises ``InputError`` naming the file and reason."""
    try:
        image = _read_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else "unreadable"
        raise InputError(f"{path}: cannot read image ({reason})") from e
    check_gzip_complete(path)
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


def _nifti_bytes(header: bytes) -> int | None:
    """Uncompressed size of a .nii file from its header (NIfTI-1 or -2), None if not one."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        return offset + math.prod(dims[1 : dims[0] + 1]) * bitpix // 8
    return None


def check_gzip_complete(path: Path) -> None:
    """``InputError`` if a .nii.gz is cut short; ITK reads such a file without complaint.

    Reads only the header and the gzip trailer, whose last 4 bytes hold the uncompressed size
    modulo 2^32: a truncated file ends in arbitrary bytes instead.
    """
    if not path.name.lower().endswith(".nii.gz"):
        return
    try:
        with gzip.open(path) as f:
            header = f.read(540)
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (stored,) = struct.unpack("<I", f.read(4))
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: corrupt gzip ({e})") from e
    expected = _nifti_bytes(header)
    if expected is not None and stored != expected % 2**32:
        raise InputError(
            f"{path}: truncated or corrupt gzip (holds {stored} bytes, header needs {expected})"
        )


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
    except RuntimeError as e:  # ITK reports failed writes as RuntimeError
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise OSError(f"{path}: {lines[-1].strip() if lines else 'write failed'}") from e
    finally:
        tmp.unlink(missing_ok=True)
