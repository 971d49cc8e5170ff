"""Hostile inputs for ``python -m inference``: a seeded corpus, batches run as a user would,
and the counts that say whether the contract held.

    python benchmarks/fuzz.py [--count 400] [--seed 0] [--weights weights] [--out build/fuzz]

Every input is made from the bundled CT (at half resolution, so that a good case takes seconds)
and belongs to one class: header mutations of each format, corrupt or truncated data, NaN,
directions that are no rotation, odd names, DICOM series with broken slices, links, FIFOs,
hidden and misplaced entries, and valid inputs of rarer kinds (NIfTI-2, two-member gzip, long
names). Each batch holds one good case beside about nine others and runs as a fresh process.
Counted per run: crashes (a signal or an exit code other than 0, 1, 2), hangs (no exit within
the timeout), tracebacks, corrupt inputs segmented (silent garbage), good cases lost, inputs
changed, leftovers (partial or stray files), outputs off their input's grid, entries without a
line, stray stderr lines, and the peak RSS of a batch (its process and the reader's).
The table is printed and written to OUT/fuzz.json.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import SAMPLE_CT, write_dicom_series  # noqa: E402

# What a run may print on stderr: the documented lines (README, "Segment your own CT").
LINE = re.compile(r"^(done |ERROR |WARNING |error: |stopped by |\[\d+/\d+\] )")


@dataclass
class Entry:
    """One input of the corpus: ``name`` in its batch folder, what must come of it."""

    name: str
    kind: str  # the class it belongs to
    expect: str  # "done": segmented; "error": an ERROR line, no output; "skip": a WARNING line
    output: str | None = None  # the output file name of a "done" entry
    grid: tuple | None = None  # size, spacing, origin, direction an output must have


def small_ct() -> sitk.Image:
    return sitk.Cast(sitk.ReadImage(str(SAMPLE_CT))[::2, ::2, ::2], sitk.sitkInt16)


def grid(image: sitk.Image) -> tuple:
    return (
        image.GetSize(),
        tuple(round(v, 4) for v in image.GetSpacing()),
        tuple(round(v, 3) for v in image.GetOrigin()),
        tuple(round(v, 4) for v in image.GetDirection()),
    )


def write(image: sitk.Image, path: Path, compress: bool = False) -> None:
    sitk.WriteImage(image, str(path), useCompression=compress)


def flip_byte(path: Path, rng: np.random.Generator, start: int, end: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    end = len(data) if end is None else end
    i = int(rng.integers(start, end))
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def mha_header_edit(path: Path, key: str, value: str | None) -> None:
    """Set (or with None remove) ``key`` in an .mha's text header."""
    data = path.read_bytes()
    end = data.index(b"ElementDataFile")
    head = data[:end].decode().splitlines()
    head = [ln for ln in head if not ln.startswith(key + " ")]
    if value is not None:
        head.insert(1, f"{key} = {value}")
    path.write_bytes(("\n".join(head) + "\n").encode() + data[end:])


# Each maker writes its input(s) into the batch folder and returns the entries.
Maker = Callable[[Path, str, np.random.Generator, sitk.Image], list[Entry]]


def good(folder: Path, stem: str, rng, ct) -> list[Entry]:
    write(ct, folder / f"{stem}_0000.nii.gz", True)
    return [Entry(f"{stem}_0000.nii.gz", "good", "done", f"{stem}.nii.gz", grid(ct))]


def mha_mutation(folder: Path, stem: str, rng, ct) -> list[Entry]:
    path = folder / f"{stem}.mha"
    write(ct, path)
    key, value = [
        ("NDims", "-1"),
        ("NDims", "100"),
        ("NDims", "2"),
        ("DimSize", "61 51 -5"),
        ("DimSize", "100000 100000 100000"),
        ("ElementType", "MET_BOGUS"),
        ("ElementNumberOfChannels", "3"),
        ("TransformMatrix", "2 0 0 0 2 0 0 0 2"),
        ("TransformMatrix", "nan 0 0 0 1 0 0 0 1"),
        ("TransformMatrix", "1 0.3 0 0 1 0 0 0 1"),
        ("ElementSpacing", "0 6 6"),
        ("HeaderSize", "100"),
        ("BinaryDataByteOrderMSB", "True"),
    ][int(rng.integers(13))]
    mha_header_edit(path, key, value)
    return [Entry(path.name, f"mha {key} = {value}", "error")]


def mha_data(folder: Path, stem: str, rng, ct) -> list[Entry]:
    path = folder / f"{stem}.mha"
    how = ["truncated", "compressed flipped", "compressed truncated", "own header"][
        int(rng.integers(4))
    ]
    write(ct, path, compress=how.startswith("compressed"))
    header = path.read_bytes().index(b"LOCAL") + 6
    if how == "truncated":
        truncate(path, 0.7)
    elif how == "compressed flipped":
        flip_byte(path, rng, header + 10, header + 2000)
    elif how == "compressed truncated":
        truncate(path, 0.8)
    else:  # the data file is the header itself
        mhd = folder / f"{stem}.mhd"
        text = path.read_bytes()[:header].decode().replace("LOCAL", mhd.name)
        path.unlink()
        mhd.write_text(text)
        return [Entry(mhd.name, "mhd data file = itself", "error")]
    return [Entry(path.name, f"mha {how}", "error")]


def nrrd_case(folder: Path, stem: str, rng, ct) -> list[Entry]:
    path = folder / f"{stem}.nrrd"
    how = ["ascii over binary", "gzip flipped", "truncated", "sheared", "nan directions", "sizes"][
        int(rng.integers(6))
    ]
    write(ct, path, compress=how == "gzip flipped")
    data = path.read_bytes()
    end = data.index(b"\n\n") + 2
    head = data[:end].decode()
    if how == "ascii over binary":
        head = re.sub(r"encoding: \w+", "encoding: ascii", head)
    elif how == "gzip flipped":
        data = data[:end] + bytes([data[end]]) + data[end + 1 :]
        body = bytearray(data[end:])
        body[int(rng.integers(20, min(2000, len(body) - 10)))] ^= 0xFF
        data = data[:end] + bytes(body)
    elif how == "truncated":
        data = data[: end + (len(data) - end) // 2]
    elif how == "sheared":
        head = re.sub(r"space directions: .*", "space directions: (6,0,0) (3,6,0) (0,0,6)", head)
    elif how == "nan directions":
        head = re.sub(r"space directions: .*", "space directions: (nan,0,0) (0,6,0) (0,0,6)", head)
    else:
        head = re.sub(r"sizes: .*", "sizes: 61 51 -3", head)
    path.write_bytes(head.encode() + data[end:])
    return [Entry(path.name, f"nrrd {how}", "error")]


def nifti_case(folder: Path, stem: str, rng, ct) -> list[Entry]:
    how = [
        "truncated nii",
        "flipped deflate",
        "truncated gz",
        "bomb",
        "dims -1",
        "datatype",
        "nan voxels",
        "sheared sform",
    ][int(rng.integers(8))]
    gz = how in ("flipped deflate", "truncated gz")
    path = folder / f"{stem}.nii{'.gz' if gz else ''}"
    image = ct
    if how == "nan voxels":
        array = sitk.GetArrayFromImage(ct).astype(np.float32)
        array[10, 10, 10:20] = np.nan
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
    write(image, path, compress=gz)
    if how == "truncated nii":
        truncate(path, 0.5)
    elif how == "flipped deflate":
        flip_byte(path, rng, 400, path.stat().st_size - 100)
    elif how == "truncated gz":
        truncate(path, 0.6)
    elif how == "bomb":
        header = bytearray(path.read_bytes()[:352])
        header[40:56] = struct.pack("<8h", 3, 1500, 1500, 1100, 1, 1, 1, 1)
        header[70:74] = struct.pack("<2h", 2, 8)
        path.write_bytes(bytes(header) + b"\0" * 16)
    elif how in ("dims -1", "datatype", "sheared sform"):
        data = bytearray(path.read_bytes())
        if how == "dims -1":
            data[40:42] = struct.pack("<h", -1)
        elif how == "datatype":
            data[70:72] = struct.pack("<h", 1234)
        else:
            data[254:256] = struct.pack("<h", 1)
            srow = list(struct.unpack("<12f", data[280:328]))
            srow[1] = srow[0] * 0.5
            data[280:328] = struct.pack("<12f", *srow)
        path.write_bytes(bytes(data))
    return [Entry(path.name, f"nifti {how}", "error")]


def valid_rare(folder: Path, stem: str, rng, ct) -> list[Entry]:
    how = ["two-member gzip", "nifti-2", "long name", "unicode name", "newline name", "link"][
        int(rng.integers(6))
    ]
    if how == "two-member gzip":
        raw = folder / "tmp.nii"
        write(ct, raw)
        data = raw.read_bytes()
        raw.unlink()
        name = f"{stem}.nii.gz"
        half = len(data) // 2
        (folder / name).write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    elif how == "nifti-2":
        name = f"{stem}.nii"
        (folder / name).write_bytes(nifti2(ct))
    elif how == "link":
        target = folder.parent / f"{folder.name}_{stem}_target.nii.gz"
        write(ct, target, True)
        name = f"{stem}_linked.nii.gz"
        (folder / name).symlink_to(target.absolute())
    else:
        stem = {
            "long name": stem + "x" * (255 - len(stem) - len(".nii.gz") - 8),
            "unicode name": f"{stem}_Überprüfung_日本",
            "newline name": f"{stem}\nsecond",
        }[how]
        name = f"{stem}.nii.gz"
        write(ct, folder / name, True)
    return [
        Entry(
            name,
            f"valid {how}",
            "done",
            name.removesuffix(".gz").removesuffix(".nii") + ".nii.gz",
            grid(ct),
        )
    ]


def nifti2(image: sitk.Image) -> bytes:
    """``image`` as a single-file little-endian NIfTI-2 (int16), sform from its geometry."""
    array = sitk.GetArrayFromImage(image).astype("<i2")
    nx, ny, nz = image.GetSize()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    # ITK is LPS, NIfTI RAS: flip x and y.
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = flip @ direction @ np.diag(spacing)
    offset = flip @ origin
    h = bytearray(544)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<2h", h, 12, 4, 16)
    struct.pack_into("<8q", h, 16, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<8d", h, 104, 1.0, *spacing, 1, 1, 1, 1)
    struct.pack_into("<q", h, 168, 544)
    struct.pack_into("<2d", h, 176, 1.0, 0.0)
    struct.pack_into("<2i", h, 344, 0, 1)  # qform 0, sform 1 (scanner)
    rows = np.hstack([affine, offset[:, None]]).reshape(-1)
    struct.pack_into("<12d", h, 400, *rows)
    struct.pack_into("<i", h, 504, 10 | (2 << 3))  # xyzt units: mm, s
    return bytes(h) + array.tobytes()


def names(folder: Path, stem: str, rng, ct) -> list[Entry]:
    how = ["not utf-8", "empty case", "too long"][int(rng.integers(3))]
    if how == "not utf-8":  # a Latin-1 name from an old system: read, and named alike
        name = os.fsdecode(stem.encode() + b"_\xff\xfe.nii.gz")
        # Written under a plain name: ITK's writer aborts on a name that is not UTF-8.
        plain = folder / f"{stem}_plain.nii.gz"
        write(ct, plain, True)
        os.rename(plain, folder / name)
        output = name.removesuffix(".nii.gz") + ".nii.gz"
        return [Entry(name, "name not utf-8", "done", output, grid(ct))]
    if how == "empty case":
        name = "_0000.nii.gz"
    else:
        name = stem + "y" * (250 - len(stem)) + ".nii"
    plain = folder / f"{stem}_plain{'.nii.gz' if name.endswith('.gz') else '.nii'}"
    write(ct, plain, name.endswith(".gz"))
    os.rename(plain, folder / name)
    return [Entry(name, f"name {how}", "error")]


def dicom_case(folder: Path, stem: str, rng, ct) -> list[Entry]:
    how = [
        "truncated slice",
        "empty slice",
        "missing slice",
        "duplicate slice",
        "no pixel data",
        "unknown transfer syntax",
        "five levels deep",
        "stray dcm among images",
    ][int(rng.integers(8))]
    if how == "stray dcm among images":
        sub = folder / f"{stem}_mixed"
        sub.mkdir()
        write_dicom_series(ct[:, :, :1], sub / "one")
        (sub / "one" / os.listdir(sub / "one")[0]).rename(folder / f"{stem}_stray.dcm")
        shutil.rmtree(sub)
        return [Entry(f"{stem}_stray.dcm", "dicom stray file among images", "error")]
    depth = 5 if how == "five levels deep" else 1
    series = folder.joinpath(*[f"{stem}_{i}" for i in range(depth)])
    write_dicom_series(ct, series)
    files = sorted(series.iterdir())
    victim = files[len(files) // 2]
    if how == "truncated slice":
        truncate(victim, 0.6)
    elif how == "empty slice":
        victim.write_bytes(b"")
    elif how == "missing slice":
        victim.unlink()
    elif how == "duplicate slice":
        shutil.copy(victim, series / f"{victim.stem}_copy.dcm")
    elif how == "no pixel data":
        for f in files:
            data = f.read_bytes()
            f.write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00")])
    elif how == "unknown transfer syntax":
        for f in files:
            data = f.read_bytes()
            f.write_bytes(data.replace(b"1.2.840.10008.1.2\0", b"1.2.840.10008.1.9\0", 1))
    top = folder / f"{stem}_0"
    if how == "five levels deep":
        return [Entry(str(series.parent.relative_to(folder)), "dicom five levels deep", "skip")]
    return [Entry(str(top.relative_to(folder)), f"dicom {how}", "error")]


def entries_odd(folder: Path, stem: str, rng, ct) -> list[Entry]:
    how = ["dangling link", "looping link", "fifo", "hidden", "folder named like a case", "text"][
        int(rng.integers(6))
    ]
    name = f"{stem}.nii.gz"
    if how == "dangling link":
        (folder / name).symlink_to(folder / "nowhere.nii.gz")
    elif how == "looping link":
        (folder / name).symlink_to(name)  # relative: itself
    elif how == "fifo":
        os.mkfifo(folder / name)
    elif how == "hidden":
        name = f".{stem}.nii.gz"
        write(ct, folder / name, True)
    elif how == "folder named like a case":
        (folder / name).mkdir()
        write(ct, folder / name / "inside.mha")
    else:
        name = f"{stem}_notes.txt"
        (folder / name).write_text("not an image\n")
    return [Entry(name, f"entry {how}", "skip")]


MAKERS: list[Maker] = [
    mha_mutation,
    mha_data,
    nrrd_case,
    nifti_case,
    valid_rare,
    names,
    dicom_case,
    entries_odd,
]


def make_corpus(
    root: Path, count: int, seed: int, per_batch: int = 9, every_class: bool = False
) -> list[tuple[Path, list[Entry]]]:
    """``count`` hostile or odd inputs in batch folders under ``root``, each batch with one good
    case; the same ``seed`` gives the same corpus. ``every_class``: the classes in turn rather
    than at random (a small corpus still holds each)."""
    rng = np.random.default_rng(seed)
    ct = small_ct()
    batches = []
    for b in range(0, count, per_batch):
        folder = root / f"batch{b // per_batch:03d}"
        folder.mkdir(parents=True)
        entries = good(folder, "good", rng, ct)
        for i in range(b, min(count, b + per_batch)):
            pick = int(rng.integers(len(MAKERS)))
            maker = MAKERS[i % len(MAKERS) if every_class else pick]
            entries += maker(folder, f"c{i:03d}", rng, ct)
        batches.append((folder, entries))
    return batches


def read_any(path: Path) -> sitk.Image:
    """``path`` read by ITK, through a link with a plain name (ITK aborts on non-UTF-8)."""
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "output.nii.gz"
        link.symlink_to(path.absolute())
        return sitk.ReadImage(str(link))


def tree_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def named(line: str, entry: Entry) -> bool:
    text = line.replace("\\n", "\n")
    return (
        entry.name in text
        or entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") in line
    )


def run_batch(folder: Path, entries: list[Entry], out: Path, weights: Path, timeout: float) -> dict:
    """One batch as a fresh process; its counts."""
    before = tree_hashes(folder)
    cmd = [sys.executable, "-m", "inference", "-i", str(folder), "-o", str(out), "--device", "cpu"]
    cmd += ["--weights", str(weights)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hang = False
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hang = True
        proc.kill()
        _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    counts = {
        "inputs": len(entries) - 1,
        "crashes": int(not hang and proc.returncode not in (0, 1, 2)),
        "hangs": int(hang),
        "tracebacks": err.count("Traceback"),
        "corrupt segmented": 0,
        "good lost": 0,
        "valid refused": 0,
        "inputs changed": int(tree_hashes(folder) != before),
        "leftovers": 0,
        "off grid": 0,
        "no line": 0,
        "stray lines": sum(1 for ln in lines if not LINE.match(ln)),
        "seconds": seconds,
        "peak rss mib": usage.ru_maxrss / 1024,
    }
    problems = []
    produced = set(os.listdir(out)) if out.exists() else set()
    expected_outputs = set()
    for e in entries:
        mentioned = [ln for ln in lines if named(ln, e)]
        if e.kind.startswith("dicom stray"):  # the folder's DICOM files are its own case
            mentioned += [ln for ln in lines if ln.startswith(f"ERROR {folder}: ")]
        if e.expect == "done":
            expected_outputs.add(e.output)
            path = out / e.output
            if not path.exists():
                counts["good lost" if e.kind == "good" else "valid refused"] += 1
                problems.append(f"{e.kind}: {e.name!r} not segmented: {mentioned[:1]}")
            elif grid(read_any(path)) != e.grid:
                counts["off grid"] += 1
                problems.append(f"{e.kind}: {e.name!r} off grid")
        else:
            stem = e.name.split("/")[0].lstrip(".").split(".")[0]
            if any(p.startswith(stem) for p in produced if p.endswith(".nii.gz")):
                counts["corrupt segmented"] += 1
                problems.append(f"{e.kind}: {e.name!r} segmented")
            want = "ERROR " if e.expect == "error" else ("WARNING ", "ERROR ")
            if not any(ln.startswith(want) for ln in mentioned):
                counts["no line"] += 1
                problems.append(f"{e.kind}: {e.name!r} without a line")
    for p in produced:
        if p not in expected_outputs and not any(
            p.startswith(e.name.split("/")[0].lstrip(".").split(".")[0])
            for e in entries
            if e.expect != "done"
        ):
            counts["leftovers"] += 1
            problems.append(f"leftover {p!r}")
    counts["problems"] = problems
    counts["stray"] = [ln for ln in lines if not LINE.match(ln)][:5]
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a batch hangs")
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    corpus = args.out / "corpus"
    batches = make_corpus(corpus, args.count, args.seed)
    totals: dict = {}
    problems = []
    scratch_before = set(Path(tempfile.gettempdir()).glob("flare22-read-*"))
    for folder, entries in batches:
        counts = run_batch(
            folder, entries, args.out / "outputs" / folder.name, args.weights, args.timeout
        )
        problems += [f"{folder.name}: {x}" for x in counts.pop("problems")]
        problems += [f"{folder.name}: stray line {x!r}" for x in counts.pop("stray")]
        for k, v in counts.items():
            totals[k] = max(totals.get(k, 0), v) if k == "peak rss mib" else totals.get(k, 0) + v
        print(f"{folder.name}: {len(entries) - 1} inputs, {counts['seconds']:.1f} s", flush=True)
    totals["leftovers"] += len(
        set(Path(tempfile.gettempdir()).glob("flare22-read-*")) - scratch_before
    )
    print(f"\n| count (corpus of {args.count}, seed {args.seed}) | value |\n|---|---:|")
    for k, v in totals.items():
        print(f"| {k} | {v:.0f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for line in problems:
        print(line)
    (args.out / "fuzz.json").write_text(
        json.dumps({"totals": totals, "problems": problems}, indent=1)
    )
    bad = (
        "crashes",
        "hangs",
        "tracebacks",
        "corrupt segmented",
        "good lost",
        "inputs changed",
        "leftovers",
        "off grid",
        "no line",
    )
    return 1 if any(totals[k] for k in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
