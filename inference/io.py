"""Finding, reading, validating and writing CT volumes."""

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
MAX_SPACING_MM = 100.0  # no CT has voxels a decimetre deep: such a header is broken
# How deep below the input folder DICOM series are looked for: patient/study/series is 3.
MAX_DICOM_DEPTH = 4
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


class InputError(ValueError):
    """An input that cannot be segmented; the message names the file and the reason."""


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES) and path.is_file()


def dicom_series(folder: Path) -> list[str]:
    """Series instance UIDs of the DICOM files directly in ``folder``."""
    # GDCM warns on stderr for every folder without DICOM: such folders are simply not cases.
    if not any(p.is_file() and not p.name.lower().endswith(SUFFIXES) for p in folder.iterdir()):
        return []  # only images (or nothing): no need to ask GDCM, which is slower
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)


def find_inputs(folder: Path) -> list[Path]:
    """The cases in ``folder``, sorted: its image files and the folders holding DICOM.

    ``folder`` itself is one case when it holds a DICOM series. Otherwise image files count
    directly in it, and DICOM folders at any depth up to ``MAX_DICOM_DEPTH`` (the common
    patient/study/series export); folders without DICOM are passed over, and nothing below a
    DICOM folder is searched. Hidden entries are skipped.
    """
    if dicom_series(folder):
        return [folder]
    found = [p for p in folder.iterdir() if not p.name.startswith(".") and is_image_file(p)]
    return sorted(found + _dicom_folders(folder, MAX_DICOM_DEPTH))


def _dicom_folders(folder: Path, depth: int) -> list[Path]:
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if dicom_series(p):
            found.append(p)
        elif depth > 1:
            found += _dicom_folders(p, depth - 1)
    return found


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


def read_header(path: Path) -> Header:
    """An input's size and voxel type from its header alone (a DICOM folder: its first slice
    and the number of slices); ``InputError`` for what is not a 3D scalar image."""
    files: tuple[str, ...] = ()
    if path.is_dir():
        series = dicom_series(path)
        if len(series) != 1:
            raise InputError(f"{path}: holds {len(series)} DICOM series, expected one")
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0] if files else str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read image ({_itk_reason(e)})") from e
    size = reader.GetSize()
    if files:
        size = (*size[:2], len(files))
    _check_shape(path, len(size), reader.GetNumberOfComponents(), size)
    description = reader.GetMetaData("descrip") if reader.HasMetaDataKey("descrip") else ""
    return Header(path, size, _BYTES.get(reader.GetPixelID(), 8), description, files)


def _check_shape(path: Path, dimension: int, components: int, size: tuple[int, ...]) -> None:
    if dimension != 3:
        raise InputError(f"{path}: {dimension}D image, expected a 3D volume")
    if components != 1:
        raise InputError(f"{path}: {components} components per voxel, expected a scalar CT")
    if min(size) < 2:
        raise InputError(f"{path}: size {size} has an axis under 2 voxels")


def read_ct(path: Path, header: Header | None = None) -> sitk.Image:
    """Read and validate a 3D scalar CT; raises ``InputError`` naming the file and reason.

    ``header`` (from ``read_header``) saves reading the header, or listing a DICOM folder,
    again.
    """
    header = header or read_header(path)
    try:
        if header.dicom_files:
            image = sitk.ReadImage(list(header.dicom_files))
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read image ({_itk_reason(e)})") from e
    check_gzip_complete(path)
    _check_shape(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())
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


def write_image(image: sitk.Image, path: Path) -> None:
    """Write ``image`` (gzip-compressed where the format allows); it appears atomically: a
    temporary name, then a rename. Raises OSError naming ``path``."""
    # ITK picks the writer by the name's ending, so the temporary name keeps it.
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{''.join(path.suffixes)}")
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
