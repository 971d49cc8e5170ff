"""An image file's header checked in Python before a C++ reader sees it.

ITK's readers trust their headers: a MetaIO header with ``NDims = -1`` or an NRRD saying
``encoding: ascii`` over binary data crashes the process, a file cut short is read zero-filled,
a gzip stream with a flipped byte is decoded into garbage without a word, a sheared direction is
quietly replaced by another. Each check here turns such a file into an ``InputError`` naming the
file and the reason. What it cannot foresee, the reader process (``inference.reader``) contains.

``check_file`` returns the path ITK should read: the file itself, or for a ``.nii.gz`` its
stream decompressed into ``scratch`` (the gzip module checks every member's CRC and length, and
reads the multi-member files ITK refuses), which costs no more than ITK's own decompression.
"""

import bz2
import gzip
import math
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from zlib_ng import zlib_ng

from .errors import InputError

# Directions whose columns are further than this from unit length or from orthogonal are not
# rotations: ITK would replace them with another direction and the labels would be written on
# a grid that is not the input's. Headers written with 6 significant digits are within 1e-5.
ORTHONORMAL_TOLERANCE = 1e-3
# A text header larger than this is not one.
MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 22
# Bytes one inflate call may return: large, since what it leaves is copied for the next call.
OUT_CHUNK = 1 << 26

# NIfTI datatype code -> numpy type (the scalar ones ITK reads).
NIFTI_TYPES = {
    2: np.uint8,
    4: np.int16,
    8: np.int32,
    16: np.float32,
    64: np.float64,
    256: np.int8,
    512: np.uint16,
    768: np.uint32,
    1024: np.int64,
    1280: np.uint64,
}
METAIO_TYPES = {
    "MET_CHAR": np.int8,
    "MET_UCHAR": np.uint8,
    "MET_SHORT": np.int16,
    "MET_USHORT": np.uint16,
    "MET_INT": np.int32,
    "MET_UINT": np.uint32,
    "MET_LONG": np.int32,
    "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64,
    "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}
NRRD_TYPES = {
    np.int8: ("signed char", "int8", "int8_t"),
    np.uint8: ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.int16: ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.uint16: ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.int32: ("int", "signed int", "int32", "int32_t"),
    np.uint32: ("uint", "unsigned int", "uint32", "uint32_t"),
    np.int64: ("longlong", "long long", "long long int", "signed long long", "int64", "int64_t"),
    np.uint64: ("ulonglong", "unsigned long long", "unsigned long long int", "uint64"),
    np.float32: ("float",),
    np.float64: ("double",),
}
NRRD_TYPE = {name: t for t, names in NRRD_TYPES.items() for name in names}
NRRD_ENCODINGS = ("raw", "gzip", "gz", "bzip2", "bz2", "ascii", "text", "txt", "hex")


def check_file(path: Path, scratch: Path, data: bool = True) -> Path:
    """``InputError`` unless ``path``'s header is one ITK can safely read and (``data``) its
    voxel data is all there and intact; the path for ITK to read (for ``.nii.gz`` a
    decompressed copy in ``scratch``, only its header when not ``data``)."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        target = scratch / "input.nii"
        if data:
            try:
                with gzip.open(path) as f:
                    head = f.read(544)
            except (OSError, EOFError, zlib.error) as e:
                raise InputError(f"{path}: corrupt or truncated gzip ({e})") from e
            gunzip(path, target, nifti_bytes(head))
        else:
            try:
                with gzip.open(path) as f:
                    target.write_bytes(f.read(544))
            except (OSError, EOFError, zlib.error) as e:
                raise InputError(f"{path}: corrupt or truncated gzip ({e})") from e
        check_nifti(target, path, data)
        return nifti1(target, scratch / "input1.nii", data)
    if name.endswith(".nii"):
        check_nifti(path, path, data)
        return nifti1(path, scratch / "input1.nii", data)
    elif name.endswith((".mha", ".mhd")):
        check_metaio(path, data)
    elif name.endswith((".nrrd", ".nhdr")):
        check_nrrd(path, data)
    return path


def gunzip(path: Path, target: Path, limit: int | None = None) -> None:
    """Decompress every member of ``path`` into ``target``; ``InputError`` if a CRC or length
    does not match (a flipped byte, a cut file), the stream is not gzip, or it holds more than
    ``limit`` bytes (a bomb behind a small header)."""
    with open(path, "rb") as src, open(target, "wb") as dst:
        inflate_gzip(src, path, dst, limit)


def inflate_gzip(
    src: BinaryIO,
    path: Path,
    dst: BinaryIO | None = None,
    limit: int | None = None,
    members: list[int] | None = None,
) -> int:
    """Decompress the gzip members from ``src``'s position to its end (into ``dst`` if given);
    their size. zlib-ng (ITK's readers use it too) checks each member's CRC-32 and length
    itself (``wbits=31``) and inflates about 1.7 times as fast as the standard library's zlib;
    the gzip module's small reads would be slower still."""
    inflate = zlib_ng.decompressobj(31)
    fed = False  # the current member has started
    total = 0
    try:
        while chunk := src.read(CHUNK):
            while chunk:
                if inflate.eof:  # another member follows (or zero padding)
                    if not chunk.strip(b"\0"):
                        break
                    inflate, fed = zlib_ng.decompressobj(31), False
                    if members is not None:
                        members.append(total)
                out = inflate.decompress(chunk, OUT_CHUNK)
                fed = True
                total += len(out)
                if limit is not None and total > limit:
                    raise InputError(
                        f"{path}: its gzip stream holds more than the {limit} bytes its header "
                        "declares"
                    )
                if dst is not None:
                    dst.write(out)
                chunk = inflate.unconsumed_tail or (inflate.unused_data if inflate.eof else b"")
    except zlib_ng.error as e:
        raise InputError(f"{path}: corrupt gzip ({e})") from e
    if not fed or not inflate.eof:
        raise InputError(f"{path}: truncated gzip (its stream ends early)")
    return total


def verify_gzip(path: Path) -> tuple[int, int]:
    """The number of gzip members of ``path`` and their decompressed size, every CRC and
    length checked, nothing written (``InputError`` as ``gunzip``)."""
    starts: list[int] = []
    with open(path, "rb") as src:
        total = inflate_gzip(src, path, members=starts)
    return len(starts) + 1, total


def nifti_bytes(head: bytes) -> int | None:
    """The size of an uncompressed .nii from its first 544 bytes, None if they are no NIfTI
    header (or declare no sensible size)."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or not math.isfinite(offset) or bitpix <= 0:
            return None
        return int(offset) + math.prod(max(d, 0) for d in dims[1 : dims[0] + 1]) * bitpix // 8
    return None


def _need(condition: bool, path: Path, reason: str) -> None:
    if not condition:
        raise InputError(f"{path}: {reason}")


def _check_dims(path: Path, dims: list[int]) -> None:
    _need(len(dims) == 3, path, f"{len(dims)}D image, expected a 3D volume")
    _need(all(n >= 1 for n in dims), path, f"size {tuple(dims)} has an axis under 1 voxel")


def check_rotation(path: Path, columns: np.ndarray, what: str, scaled: bool = True) -> None:
    """``InputError`` unless the 3 x 3 ``columns`` (each scaled to unit length when ``scaled``:
    they hold the spacing) are a rotation, finite and orthonormal: the only directions an
    output can be written with unchanged."""
    _need(bool(np.isfinite(columns).all()), path, f"its {what} holds NaN or infinite values")
    norms = np.linalg.norm(columns, axis=0)
    _need(bool((norms > 0).all()), path, f"its {what} has a zero axis")
    unit = columns / norms if scaled else columns
    off = np.abs(unit.T @ unit - np.eye(3)).max()
    _need(
        off <= ORTHONORMAL_TOLERANCE,
        path,
        f"its {what} is not a rotation (axes {off:.3g} from orthogonal): the labels could not "
        "be written on the input's grid",
    )


def _data_size(path: Path, available: int, needed: int, where: str = "") -> None:
    if available < needed:
        raise InputError(
            f"{path}: truncated: {available} bytes of voxel data{where}, its header declares "
            f"{needed}"
        )


# NIfTI-1 and -2 (single file, .nii)


def check_nifti(nii: Path, shown: Path, data: bool = True) -> None:
    """The header of the uncompressed ``nii`` (``shown`` in messages), and (``data``) against
    its bytes."""
    size = nii.stat().st_size
    with open(nii, "rb") as f:
        head = f.read(544)
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = list(struct.unpack(endian + "8h", head[40:56]))
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            pixdim = struct.unpack(endian + "8f", head[76:108])
            offset = struct.unpack(endian + "f", head[108:112])[0]
            scale = struct.unpack(endian + "2f", head[112:120])
            _qform, sform = struct.unpack(endian + "2h", head[252:256])
            quatern = struct.unpack(endian + "6f", head[256:280])
            srow = struct.unpack(endian + "12f", head[280:328])
            first = 352
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = list(struct.unpack(endian + "8q", head[16:80]))
            pixdim = struct.unpack(endian + "8d", head[104:168])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            scale = struct.unpack(endian + "2d", head[176:192])
            _qform, sform = struct.unpack(endian + "2i", head[344:352])
            quatern = struct.unpack(endian + "6d", head[352:400])
            srow = struct.unpack(endian + "12d", head[400:496])
            first = 544
            break
    else:
        raise InputError(f"{shown}: not a NIfTI file (no NIfTI-1 or -2 header)")
    _need(1 <= dims[0] <= 7, shown, f"its header declares {dims[0]} dimensions")
    used = dims[1 : dims[0] + 1]
    _need(all(n >= 1 for n in used), shown, f"its header declares a size of {tuple(used)}")
    extra = [n for n in used[3:] if n != 1]
    _check_dims(shown, used[:3] + extra if len(used) >= 3 else used)
    dtype = NIFTI_TYPES.get(datatype)
    _need(dtype is not None, shown, f"voxel type {datatype} is not a scalar type this reads")
    itemsize = np.dtype(dtype).itemsize
    _need(bitpix == 8 * itemsize, shown, f"bitpix {bitpix} does not match its voxel type")
    _need(math.isfinite(offset) and offset >= first, shown, f"voxel offset {offset} is invalid")
    _need(all(math.isfinite(p) for p in pixdim[1:4]), shown, "its voxel spacing is not finite")
    _need(all(math.isfinite(s) for s in scale), shown, "its intensity scaling is not finite")
    _need(all(math.isfinite(q) for q in quatern), shown, "its qform holds NaN or infinite values")
    if sform > 0:
        rows = np.array(srow, float).reshape(3, 4)
        check_rotation(shown, rows[:, :3], "sform")
        _need(bool(np.isfinite(rows[:, 3]).all()), shown, "its origin is not finite")
    nbytes = math.prod(used) * itemsize
    if not data:
        return
    _data_size(shown, size - int(offset), nbytes)
    if np.issubdtype(dtype, np.floating):
        endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
        typed = np.dtype(dtype).newbyteorder(endian)
        _check_finite(nii, typed, int(offset), nbytes // itemsize, shown)


def nifti1(nii: Path, target: Path, data: bool = True) -> Path:
    """``nii`` itself when it is NIfTI-1; a NIfTI-2 file rewritten as NIfTI-1 into ``target``
    (ITK reads only the first; the fields map one to one, the voxels are copied behind)."""
    with open(nii, "rb") as f:
        head = f.read(544)
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if struct.unpack(endian + "i", head[:4])[0] != 540:
        return nii

    def get(fmt: str, at: int) -> tuple:
        return struct.unpack_from(endian + fmt, head, at)

    dims = get("8q", 16)
    _need(max(dims) <= 32767, nii, f"size {dims[1:4]} is too large for a CT")
    h = bytearray(352)

    def put(fmt: str, at: int, *values: object) -> None:
        struct.pack_into(endian + fmt, h, at, *values)

    put("i", 0, 348)
    put("8h", 40, *dims)
    put("3f", 56, *get("3d", 80))
    put("h", 68, get("i", 504)[0])
    put("2h", 70, *get("2h", 12))  # datatype, bitpix
    put("h", 74, get("q", 224)[0])
    put("8f", 76, *get("8d", 104))
    put("f", 108, 352.0)
    put("2f", 112, *get("2d", 176))
    put("h", 120, get("q", 232)[0])
    h[122] = get("i", 496)[0] & 0xFF
    h[123] = get("i", 500)[0] & 0xFF
    put("4f", 124, *get("4d", 192))
    h[148:228] = head[240:320]
    h[228:252] = head[320:344]
    put("2h", 252, *get("2i", 344))
    put("6f", 256, *get("6d", 352))
    put("12f", 280, *get("12d", 400))
    h[328:344] = head[508:524]
    h[39] = head[524]
    h[344:348] = b"n+1\0"
    with open(nii, "rb") as src, open(target, "wb") as dst:
        dst.write(h)
        if data:
            src.seek(get("q", 168)[0])
            shutil.copyfileobj(src, dst, CHUNK)
    return target


def _check_finite(source: Path, dtype: np.dtype, start: int, count: int, path: Path) -> None:
    """``InputError`` if any of the ``count`` floats at ``start`` of ``source`` is NaN or
    infinite; read in chunks (a memory map would hold the whole file in the RSS)."""
    with open(source, "rb") as f:
        f.seek(start)
        left = count
        while left:
            chunk = np.fromfile(f, dtype, min(left, CHUNK))
            if chunk.size == 0:
                return  # short: the size check says so
            if not np.isfinite(chunk).all():
                raise InputError(f"{path}: voxels hold NaN or infinite values")
            left -= chunk.size


# MetaIO (.mha, .mhd)


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[list[str], int]:
    """The header lines of a text-headed file up to and including the line ``end`` matches
    (or to the end of the file), and the byte offset after it."""
    lines, offset = [], 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            _need(offset <= MAX_HEADER_BYTES, path, "no end of its header in the first MiB")
            try:
                line = raw.decode("ascii").rstrip("\r\n")
            except UnicodeDecodeError:
                raise InputError(f"{path}: its header holds bytes that are not text") from None
            lines.append(line)
            if end.match(raw):
                break
    return lines, offset


def _numbers(path: Path, key: str, value: str, count: int | None, kind: type = float) -> list:
    try:
        values = [kind(v) for v in value.split()]
    except ValueError:
        raise InputError(f"{path}: {key} = {value!r} is not a list of numbers") from None
    if count is not None and len(values) != count:
        raise InputError(f"{path}: {key} has {len(values)} values, expected {count}")
    if kind is float and not all(math.isfinite(v) for v in values):
        raise InputError(f"{path}: {key} holds NaN or infinite values")
    return values


def check_metaio(path: Path, data_too: bool = True) -> None:
    lines, header_end = _text_header(path, re.compile(rb"\s*ElementDataFile\s*=", re.I))
    fields = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    _need("ndims" in fields, path, "not a MetaIO header (no NDims)")
    (ndims,) = _numbers(path, "NDims", fields["ndims"], 1, int)
    _need(1 <= ndims <= 16, path, f"NDims = {ndims} is not a dimension count")
    dims = _numbers(path, "DimSize", fields.get("dimsize", ""), ndims, int)
    _check_dims(path, dims)
    dtype = METAIO_TYPES.get(fields.get("elementtype", "").upper())
    _need(
        dtype is not None, path, f"ElementType {fields.get('elementtype')!r} is not a scalar type"
    )
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    _need(channels == 1, path, f"{channels} components per voxel, expected a scalar CT")
    for key in ("elementspacing", "elementsize"):
        if key in fields:
            spacing = _numbers(path, key, fields[key], ndims)
            _need(all(s > 0 for s in spacing), path, f"{key} {spacing} is not positive")
    for key in ("offset", "position", "origin"):
        if key in fields:
            _numbers(path, key, fields[key], ndims)
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            matrix = np.array(_numbers(path, key, fields[key], ndims * ndims), float)
            # MetaIO writes the direction's columns one after another.
            check_rotation(path, matrix.reshape(3, 3).T, f"direction ({key})", scaled=False)
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    source = fields.get("elementdatafile", "")
    if not data_too:
        return
    _need(bool(source), path, "no ElementDataFile: where its voxels are is not said")
    if source.upper() == "LOCAL":
        data, start = path, header_end
    else:
        _need(
            not source.upper().startswith("LIST") and "%" not in source,
            path,
            f"ElementDataFile {source!r}: voxels split over several files are not read",
        )
        data, start = path.parent / source, 0
        _need(data.is_file(), path, f"its data file {source!r} is not there")
        _need(not data.samefile(path), path, "its data file is the header itself")
    skip = int(fields.get("headersize", "0") or 0)
    size = data.stat().st_size
    if skip == -1:  # the voxels are the file's last bytes
        start = size - nbytes
    else:
        _need(skip >= 0, path, f"HeaderSize = {skip} is invalid")
        start += skip
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if compressed:
        _check_zlib(path, data, start, nbytes)
    else:
        _data_size(path, size - start, nbytes)
        _need(
            size - start == nbytes or data != path,
            path,
            f"{size - start - nbytes} bytes more than its header declares (a wrong header?)",
        )
        if np.issubdtype(dtype, np.floating):
            msb = fields.get("binarydatabyteordermsb", fields.get("elementbyteordermsb", "false"))
            order = ">" if msb.lower() == "true" else "<"
            count = nbytes // np.dtype(dtype).itemsize
            _check_finite(data, np.dtype(dtype).newbyteorder(order), start, count, path)


def _check_zlib(path: Path, data: Path, start: int, nbytes: int) -> None:
    """The zlib stream at ``start`` of ``data`` decompresses whole to ``nbytes`` bytes."""
    inflate = zlib_ng.decompressobj()
    total = 0
    try:
        with open(data, "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                while chunk and not inflate.eof:
                    total += len(inflate.decompress(chunk, CHUNK))
                    _need(total <= nbytes, path, f"its compressed data holds over {nbytes} bytes")
                    chunk = inflate.unconsumed_tail
                if inflate.eof:
                    break
    except zlib_ng.error as e:
        raise InputError(f"{path}: corrupt compressed data ({e})") from e
    _need(inflate.eof, path, "its compressed data ends early (truncated?)")
    _need(
        total == nbytes,
        path,
        f"its compressed data holds {total} bytes, its header declares {nbytes}",
    )


# NRRD (.nrrd, .nhdr)


def check_nrrd(path: Path, data_too: bool = True) -> None:
    lines, header_end = _text_header(path, re.compile(rb"\r?\n$|\r$"))
    _need(bool(lines) and lines[0].startswith("NRRD"), path, "not an NRRD file (no NRRD magic)")
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    (ndims,) = _numbers(path, "dimension", fields.get("dimension", ""), 1, int)
    _need(1 <= ndims <= 16, path, f"dimension: {ndims} is not a dimension count")
    dims = _numbers(path, "sizes", fields.get("sizes", ""), ndims, int)
    _check_dims(path, dims)
    dtype = NRRD_TYPE.get(fields.get("type", "").lower())
    _need(dtype is not None, path, f"type: {fields.get('type')!r} is not a scalar type")
    encoding = fields.get("encoding", "").lower()
    _need(encoding in NRRD_ENCODINGS, path, f"encoding: {encoding!r} is not one NRRD knows")
    if "space directions" in fields:
        vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
        _need(len(vectors) == 3, path, "space directions: expected 3 vectors")
        columns = [_numbers(path, "space directions", v.replace(",", " "), 3) for v in vectors]
        check_rotation(path, np.array(columns, float).T, "space directions")
    if "spacings" in fields:
        spacing = _numbers(path, "spacings", fields["spacings"], ndims)
        _need(all(s > 0 for s in spacing), path, f"spacings {spacing} are not positive")
    if "space origin" in fields:
        _numbers(path, "space origin", fields["space origin"].strip("()").replace(",", " "), 3)
    source = fields.get("data file", fields.get("datafile"))
    if source is None:
        _need(path.suffix.lower() == ".nrrd", path, "a detached header without a data file")
        data, start = path, header_end
    else:
        _need(
            not source.upper().startswith("LIST") and len(source.split()) == 1,
            path,
            f"data file: {source!r}: voxels split over several files are not read",
        )
        data, start = path.parent / source, 0
        _need(data.is_file(), path, f"its data file {source!r} is not there")
        _need(not data.samefile(path), path, "its data file is the header itself")
    if not data_too:
        return
    start += int(fields.get("byte skip", "0") or 0) if encoding == "raw" else 0
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    if encoding == "raw":
        _data_size(path, data.stat().st_size - start, nbytes)
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        total = 0
        with open(data, "rb") as f:
            f.seek(start)
            if encoding.startswith("gz"):
                total = inflate_gzip(f, path, limit=nbytes)
            else:
                try:
                    with bz2.open(f) as stream:
                        while chunk := stream.read(CHUNK):
                            total += len(chunk)
                except (OSError, EOFError, ValueError) as e:
                    raise InputError(f"{path}: corrupt or truncated bzip2 data ({e})") from e
        _need(
            total == nbytes,
            path,
            f"its {encoding} data holds {total} bytes, header declares {nbytes}",
        )
    else:  # text: the C++ reader crashes on binary bytes here; count the numbers instead
        with open(data, "rb") as f:
            f.seek(start)
            text = f.read()
        try:
            values = text.decode("ascii").split()
            if encoding != "hex":
                np.array(values[: math.prod(dims)], float)
        except (UnicodeDecodeError, ValueError):
            raise InputError(f"{path}: encoding {encoding}, but its data is not text") from None
        count = len(values) if encoding != "hex" else len("".join(values)) // 2
        want = math.prod(dims) if encoding != "hex" else nbytes
        _need(count >= want, path, f"encoding {encoding}: {count} values, its header needs {want}")


def byte_order_error(array: np.ndarray, path: Path) -> str | None:
    """Why a 16-bit CT looks read in the wrong byte order, or None.

    A CT in HU lies within about -1024..4000; read with its bytes swapped most voxels land far
    outside. Judged on a sample: swapped-looking values in the order read, CT-like values the
    other way round."""
    if array.dtype.itemsize != 2 or not np.issubdtype(array.dtype, np.integer):
        return None
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // 100_000)]

    def wild(a: np.ndarray) -> float:
        values = a.astype(np.int32)
        return float(np.mean((values < -4096) | (values > 8192)))

    if wild(sample) > 0.25 and wild(sample.byteswap()) < 0.01:
        return (
            f"{path}: its voxels read as HU only with their bytes swapped: the byte order its "
            "header declares is wrong"
        )
    return None
