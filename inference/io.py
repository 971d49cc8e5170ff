"""Finding, reading, validating and writing CT volumes."""

import gzip
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .discovery import SUFFIXES, find_inputs, is_dicom_file
from .errors import InputError
from .headers import (
    byte_order_error,
    check_file,
    check_rotation,
    nifti_bytes,
    verify_gzip,
)

__all__ = ["SUFFIXES", "InputError", "find_inputs"]  # where callers have imported them from

MAX_SPACING_MM = 100.0  # no CT has voxels a decimetre deep: such a header is broken
# No CT scanner makes more voxels than this (512 x 512 x 2048; 1024 x 1024 x 512): a header
# declaring more is broken or hostile, and the pipeline's memory grows with it.
MAX_VOXELS = 2**29
# Slices whose spacing differs from the series' median by more than this fraction are a gap
# (a missing slice) or a fold (a duplicate).
SLICE_SPACING_TOLERANCE = 0.05
# Written into the NIfTI header's description of every label map we write, so that a later
# run over a folder holding both CTs and our outputs skips the outputs instead of segmenting
# them (or calling them a clash with the CT they came from).
OUTPUT_MARK = "flare22 labels (python -m inference)"

# Bytes per voxel of each scalar pixel type ITK reads.
_BYTES = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkFloat32: 4,
}


def dicom_series(folder: Path) -> list[str]:
    """Series instance UIDs of the DICOM files directly in ``folder`` (GDCM: run it in the
    reader process, ``inference.reader``)."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


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


@dataclass(frozen=True)
class Header:
    """What an input's header says, read without its voxels."""

    path: Path
    size: tuple[int, ...]  # ITK order: x, y, z
    bytes_per_voxel: int  # of the array ITK will read (8 for types not listed in _BYTES)
    description: str = ""  # the NIfTI header's description field
    dicom_files: tuple[str, ...] = ()  # a DICOM folder's slices, in order

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    @property
    def is_our_output(self) -> bool:
        return self.description.startswith(OUTPUT_MARK)


def _itk_reason(e: RuntimeError, default: str = "unreadable") -> str:
    """The last line of an ITK exception's message: the one that says what went wrong."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else default


def read_header(path: Path, scratch: Path | None = None) -> Header:
    """An input's size and voxel type from its header alone (a DICOM folder: its first slice
    and the number of slices); ``InputError`` for what is not a 3D scalar image.

    ``scratch``: a folder for a ``.nii.gz``'s header (a temporary one when None).
    """
    files: tuple[str, ...] = ()
    with _scratch(scratch) as tmp:
        if path.is_dir():
            files = dicom_files(itk_name(path, tmp))
            target = Path(files[0])
        else:
            target = itk_name(check_file(path, tmp, data=False), tmp)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(target))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise InputError(f"{path}: cannot read image ({_itk_reason(e)})") from e
    size = reader.GetSize()
    if len(files) > 1:
        size = (*size[:2], len(files))
    elif files and (len(size) < 3 or size[2] < 2):  # one file: an enhanced multi-frame CT, or not
        raise InputError(
            f"{path}: its one DICOM file {os.path.basename(files[0])} is a single "
            "slice, not a series"
        )
    _check_shape(path, len(size), reader.GetNumberOfComponents(), size)
    description = reader.GetMetaData("descrip") if reader.HasMetaDataKey("descrip") else ""
    return Header(path, size, _BYTES.get(reader.GetPixelID(), 8), description, files)


@contextmanager
def _scratch(folder: Path | None) -> Iterator[Path]:
    if folder is not None:
        yield folder
    else:
        with tempfile.TemporaryDirectory(prefix="flare22-read-") as tmp:
            yield Path(tmp)


def itk_name(path: Path, scratch: Path) -> Path:
    """``path``, or a link to it in ``scratch`` when its name is not UTF-8: ITK's readers abort
    the process on such a name (a C++ exception no one catches), Python reads it fine."""
    try:
        str(path).encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    if path.name.lower().endswith((".mhd", ".nhdr")):  # their data file is found beside them
        raise InputError(f"{path}: a detached header whose name is not UTF-8; rename it")
    suffix = next((s for s in SUFFIXES if path.name.lower().endswith(s)), "")
    link = scratch / f"input-link{suffix}"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.abspath(path))
    return link


def dicom_files(folder: Path) -> tuple[str, ...]:
    """The slices of the one DICOM series in ``folder``, in order; ``InputError`` when there
    is no series, more than one, or a DICOM file of the folder is in none (unreadable)."""
    series = dicom_series(folder)
    dicom = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))
    if not series:
        raise InputError(
            f"{folder}: holds {len(dicom)} DICOM file(s) ({dicom[0].name if dicom else 'none'}"
            f"{', ...' if len(dicom) > 1 else ''}) but no image series (no pixel data, or a "
            "transfer syntax the reader does not know)"
        )
    if len(series) > 1:
        raise InputError(f"{folder}: holds {len(series)} DICOM series, expected one")
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    listed = {os.path.basename(f) for f in files}
    left = [p.name for p in dicom if p.name not in listed]
    if left:
        raise InputError(
            f"{folder}: slice {left[0]} is not part of its series (empty, truncated or "
            f"unreadable{f'; {len(left)} such files' if len(left) > 1 else ''})"
        )
    return files


def _check_shape(path: Path, dimension: int, components: int, size: tuple[int, ...]) -> None:
    if dimension != 3:
        raise InputError(f"{path}: {dimension}D image, expected a 3D volume")
    if components != 1:
        raise InputError(f"{path}: {components} components per voxel, expected a scalar CT")
    if min(size) < 2:
        raise InputError(f"{path}: size {size} has an axis under 2 voxels")
    if math.prod(size) > MAX_VOXELS:
        shape = "x".join(str(n) for n in reversed(size))
        raise InputError(
            f"{path}: {shape} voxels, more than any CT scanner makes ({MAX_VOXELS}); not read"
        )


def read_ct(path: Path, header: Header | None = None, scratch: Path | None = None) -> sitk.Image:
    """Read and validate a 3D scalar CT; raises ``InputError`` naming the file and reason.

    ``header`` (from ``read_header``) saves listing a DICOM folder again; ``scratch``: a folder
    for a ``.nii.gz``'s decompressed copy (a temporary one when None).
    """
    header = header or read_header(path, scratch)
    with _scratch(scratch) as tmp:
        try:
            files = header.dicom_files
            if files and not os.path.exists(files[0]):  # listed through a link since removed
                files = dicom_files(itk_name(path, tmp))
            if len(files) > 1:
                image = _read_series(path, files)
            elif files:  # an enhanced multi-frame CT: its frames are the slices
                image = sitk.ReadImage(files[0])
            elif path.name.lower().endswith(".nii.gz"):
                image = _read_nii_gz(path, tmp)
            else:
                image = sitk.ReadImage(str(itk_name(check_file(path, tmp), tmp)))
        except RuntimeError as e:
            raise InputError(f"{path}: cannot read image ({_itk_reason(e)})") from e
    _check_shape(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{path}: spacing {spacing} mm is not in (0, {MAX_SPACING_MM:g}]")
    check_rotation(path, np.array(image.GetDirection()).reshape(3, 3), "direction", False)
    if not all(math.isfinite(o) for o in image.GetOrigin()):
        raise InputError(f"{path}: its origin is not finite")
    return image


def _read_nii_gz(path: Path, scratch: Path) -> sitk.Image:
    """A .nii.gz read by ITK while a thread checks its gzip stream (CRCs, lengths, the size
    its header declares): side by side on two cores, about as fast as ITK alone. A file ITK
    cannot take (several gzip members, NIfTI-2) is decompressed first instead."""
    # The header checked before ITK sees it; its first bytes land in scratch/input.nii, and a
    # NIfTI-2 header comes back rewritten elsewhere: ITK reads only NIfTI-1.
    head = scratch / "input.nii"
    fast = check_file(path, scratch, data=False) == head
    with ThreadPoolExecutor(1) as pool:
        checking = pool.submit(verify_gzip, path)
        image = _itk_read_or_none(itk_name(path, scratch)) if fast else None
        members, total = checking.result()
    expected = nifti_bytes(head.read_bytes())
    if expected is not None and total < expected:
        raise InputError(
            f"{path}: truncated: {total} bytes once decompressed, its header declares {expected}"
        )
    if image is None or members > 1:
        image = sitk.ReadImage(str(check_file(path, scratch)))
    return image


def _itk_read_or_none(path: Path) -> sitk.Image | None:
    """ITK's read of ``path``; None where ITK refuses it (a second gzip member), for the
    caller to read it another way."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        return None


def _read_series(folder: Path, files: tuple[str, ...]) -> sitk.Image:
    """A DICOM series, refused when its slices are not evenly spaced: a missing slice (a
    gap) or one position twice (a duplicate) would shift every organ below it."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    positions = []
    for i, f in enumerate(files):
        try:
            positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
        except (RuntimeError, ValueError):
            raise InputError(f"{folder}: slice {os.path.basename(f)} has no position") from None
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    depth = np.array(positions) @ normal
    steps = np.diff(depth)
    if steps.size:
        typical = float(np.median(np.abs(steps)))
        for i, step in enumerate(np.abs(steps)):
            name = os.path.basename(files[i + 1])
            if step <= SLICE_SPACING_TOLERANCE * typical or typical == 0:
                raise InputError(f"{folder}: slice {name} repeats the position of the one before")
            if abs(step - typical) > SLICE_SPACING_TOLERANCE * typical:
                raise InputError(
                    f"{folder}: slice {name} is {step:.3g} mm from the one before, the others "
                    f"{typical:.3g} mm: a slice missing?"
                )
    return image


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
    expected = nifti_bytes(header)
    if expected is not None and stored != expected % 2**32:
        raise InputError(
            f"{path}: truncated or corrupt gzip (holds {stored} bytes, header needs {expected})"
        )


def hu_array(image: sitk.Image, path: Path) -> np.ndarray:
    """The voxels as a ``(z, y, x)`` array; ``InputError`` when any is NaN or infinite, or
    when they look read in the wrong byte order."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        flat = array.reshape(-1)
        for start in range(0, flat.size, 1 << 22):  # no volume-sized temporary
            if not np.isfinite(flat[start : start + (1 << 22)]).all():
                raise InputError(f"{path}: voxels hold NaN or infinite values")
    if reason := byte_order_error(array, path):
        raise InputError(reason)
    return array


def partial_path(path: Path) -> Path:
    """The hidden name ``path`` is written under before it is renamed: short, so that an output
    whose name is the longest the file system takes still has one, and the writer's own."""
    return path.with_name(f".flare22-partial-{os.getpid()}{''.join(path.suffixes[-2:])}")


def write_image(image: sitk.Image, path: Path) -> None:
    """Write ``image`` (gzip-compressed where the format allows); it appears atomically: a
    temporary name, then a rename. Raises OSError naming ``path``."""
    # ITK picks the writer by the name's ending, so the temporary name keeps it.
    tmp = partial_path(path)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    except RuntimeError as e:  # ITK reports failed writes as RuntimeError
        raise OSError(f"{path}: {_itk_reason(e, 'write failed')}") from e
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in the patient: all its label map takes from it, so that
    the image's voxels need not be kept until the labels are written."""

    size: tuple[int, ...]  # ITK order: x, y, z
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def write_labels(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write uint8 ``(z, y, x)`` labels with ``geometry``; appears atomically."""
    out = sitk.GetImageFromArray(labels)
    if out.GetSize() != geometry.size:
        raise ValueError(f"{path}: labels of size {out.GetSize()} for an image of {geometry.size}")
    out.SetSpacing(geometry.spacing)
    out.SetOrigin(geometry.origin)
    out.SetDirection(geometry.direction)
    out.SetMetaData("ITK_FileNotes", OUTPUT_MARK)  # NIfTI writes it as the description
    write_image(out, path)
