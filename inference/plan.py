"""What a batch will write, checked before any work: no input overwritten, no case lost.

Problems that would fail every case (an output folder that can't be written, an output path
that is an input) raise ``PlanError``: the CLI exits 2 before loading the networks. Problems
of some cases (two inputs with one case name) become their ``ERROR`` lines, and the rest run.
"""

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .discovery import name_error, shown
from .io import Header, InputError, case_name, read_header

if TYPE_CHECKING:
    from .reader import Reader


class PlanError(Exception):
    """The batch cannot run as asked; the message is one line that says what to do."""


@dataclass(frozen=True)
class Case:
    source: Path  # an image file or a DICOM folder
    output: Path  # OUT/<case>.nii.gz
    header: Header | None = None  # read while planning (files only), so reading reuses it


@dataclass
class Plan:
    cases: list[Case] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<files>: <reason>", not segmented
    skipped: list[Path] = field(default_factory=list)  # our own label maps among the inputs


def prepare_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable, or raise ``PlanError``."""
    try:
        str(folder.resolve()).encode("utf-8")
    except UnicodeEncodeError:
        raise PlanError(
            f"{shown(folder)}: the output folder's path is not UTF-8, which the image writer "
            "cannot take; choose another (-o)"
        ) from None
    if folder.exists() and not folder.is_dir():
        raise PlanError(f"{folder}: is a file, not a folder; give -o a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".flare22-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PlanError(
            f"{folder}: cannot write the outputs there ({e.strerror or e}); create it and make "
            f"it writable for this user (uid {os.getuid()}); for the container, before docker "
            "run: mkdir -p outputs && chmod a+rwx outputs (it runs as uid 1000)"
        ) from e


def plan_batch(inputs: list[Path], out_dir: Path, reader: "Reader | None" = None) -> Plan:
    """Each input's output path; refuses (``PlanError``) any output that is an input or lies
    inside a DICOM input folder; reports inputs that share a case name or whose name can't
    give an output file, and skips our own earlier outputs (``inference.io.OUTPUT_MARK`` in
    their header). Headers are read by ``reader`` (in-process when None: trusted inputs)."""
    plan = Plan()
    by_name: dict[str, list[Path]] = defaultdict(list)
    headers: dict[Path, Header] = {}
    for path in inputs:
        if reason := name_error(path, case_name(path)):
            plan.errors.append(reason)
            continue
        header = None if path.is_dir() else _header(path, reader)
        if header is not None and header.is_our_output:
            plan.skipped.append(path)
            continue
        by_name[case_name(path)].append(path)
        if header is not None:
            headers[path] = header
    # Our own earlier outputs are not inputs: this run may replace them.
    kept = [p for paths in by_name.values() for p in paths]
    sources = {_real(p): p for p in kept}
    inodes = {_inode(p): p for p in kept}  # hard links; case-insensitive file systems
    inodes.pop(None, None)
    dicom_folders = [_real(p) for p in kept if p.is_dir()]
    for name, paths in sorted(by_name.items()):
        output = out_dir / f"{name}.nii.gz"
        real = _real(output)
        clash = sources.get(real) or inodes.get(_inode(output))
        if clash:
            raise PlanError(
                f"{shown(clash)}: the output {shown(output)} would overwrite this input; "
                "choose another output folder (-o)"
            )
        for folder in dicom_folders:
            if real.is_relative_to(folder):
                raise PlanError(
                    f"{output}: would be written inside the DICOM input folder {folder}; "
                    "choose an output folder outside it (-o)"
                )
        if len(paths) > 1:
            files = " and ".join(str(p) for p in sorted(paths))
            plan.errors.append(
                f"{files}: all are case {name!r} and would write {output}; "
                "none segmented: rename all but one"
            )
        else:
            plan.cases.append(Case(paths[0], output, headers.get(paths[0])))
    plan.cases.sort(key=lambda c: c.source)
    return plan


def _real(path: Path) -> Path:
    """The path with links and '..' resolved, so two spellings of one file compare equal."""
    return Path(os.path.realpath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # not there yet
    return st.st_dev, st.st_ino


def _header(path: Path, reader: "Reader | None") -> Header | None:
    try:
        return reader.header(path) if reader is not None else read_header(path)
    except (InputError, OSError):
        return None  # a bad input is reported when its turn comes
