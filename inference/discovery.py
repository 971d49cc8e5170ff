"""What in an input folder is a case, and why each other entry is not.

Pure Python: no C++ reader looks at a file here, so nothing found while listing can crash the
batch. A file is DICOM by its ``DICM`` magic (or a ``.dcm`` name); a folder's DICOM files
form one case named after the folder (``inference.reader`` checks the series), while the image
files beside them are cases of their own.
"""

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
# How deep below the input folder DICOM series are looked for: patient/study/series is 3.
MAX_DICOM_DEPTH = 4
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Data files of detached headers (.mhd, .nhdr): read through their header, not cases.
DATA_SUFFIXES = (".raw", ".zraw", ".img", ".gz", ".bz2")
# File names never longer than this on the usual file systems (ext4, xfs, btrfs, overlayfs).
NAME_MAX = 255


@dataclass
class Scan:
    cases: list[Path] = field(default_factory=list)  # image files and DICOM folders, sorted
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (entry, why): WARNING lines


def shown(text: object) -> str:
    """``text`` safe to print on one line: undecodable bytes as ``\\xNN``, control characters
    (a newline in a file name) escaped."""
    raw = (
        os.fsencode(text)
        if isinstance(text, Path)
        else str(text).encode("utf-8", "surrogateescape")
    )
    decoded = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in decoded)


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble (or a DICOM suffix)."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _kind(path: Path) -> str | None:
    """Why ``path`` can't be read as a file or folder (a broken link, a FIFO, ...), or None."""
    try:
        st = path.stat()
    except OSError as e:
        if path.is_symlink():
            return (
                "a link that leads nowhere" if e.errno == 2 else f"a link that fails ({e.strerror})"
            )
        return f"cannot be looked at ({e.strerror})"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    what = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device"}
    return f"not a regular file ({what.get(stat.S_IFMT(st.st_mode), 'a device')})"


def _listing(folder: Path, scan: Scan) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        scan.skipped.append((folder, f"skipped: cannot list it ({e.strerror})"))
        return []


def scan_inputs(folder: Path) -> Scan:
    """The cases in ``folder`` and every entry passed over with the reason.

    Image files count directly in ``folder``; DICOM files make their folder a case, in
    ``folder`` itself or in folders down to ``MAX_DICOM_DEPTH`` levels (a patient/study/series
    export). Hidden entries, other files, and folders holding no DICOM are reported.
    """
    scan = Scan()
    _scan(folder, MAX_DICOM_DEPTH, scan, top=True)
    scan.cases.sort()
    return scan


def _scan(folder: Path, depth: int, scan: Scan, top: bool) -> bool:
    """Add ``folder``'s cases and skipped entries to ``scan``; whether it held anything to
    read or report (a folder below the top that did not is reported by its caller)."""
    dicom = found = False
    for p in _listing(folder, scan):
        name = p.name
        if name.startswith("."):
            if not name.startswith((".flare22-", ".nfs")):
                scan.skipped.append((p, "skipped: a hidden entry"))
            continue
        found = True
        if reason := _kind(p):
            scan.skipped.append((p, f"skipped: {reason}"))
        elif p.is_dir():
            if depth == 0:
                why = f"DICOM series are looked for {MAX_DICOM_DEPTH} levels down only"
                scan.skipped.append((p, f"skipped: {why}"))
            elif not _scan(p, depth - 1, scan, top=False):
                what = "a folder named like an image file" if _is_image(p) else "a folder"
                scan.skipped.append((p, f"skipped: {what} holding no DICOM series"))
        elif _is_image(p):
            if top:
                scan.cases.append(p)
            else:
                why = "image files are read from the input folder itself, not below"
                scan.skipped.append((p, f"skipped: {why}"))
        elif name == "DICOMDIR":
            continue  # an index of the series, which are read from their folders
        elif is_dicom_file(p):
            dicom = True
        elif not name.lower().endswith(DATA_SUFFIXES) or not top:
            kinds = ", ".join(SUFFIXES)
            scan.skipped.append((p, f"skipped: neither an image file ({kinds}) nor DICOM"))
    if dicom:
        scan.cases.append(folder)
    return found


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def find_inputs(folder: Path) -> list[Path]:
    """The cases in ``folder``, sorted (``scan_inputs`` without the skipped entries)."""
    return scan_inputs(folder).cases


def name_error(path: Path, case: str) -> str | None:
    """Why ``path``, case ``case``, can't give an output file, or None."""
    if not case or case in (".", ".."):
        return f"{shown(path)}: gives an empty case name; rename it (<case>_0000.nii.gz)"
    if len(os.fsencode(f"{case}.nii.gz")) > NAME_MAX:
        return f"{shown(path)}: its output name would be over {NAME_MAX} bytes; shorten it"
    return None
