"""``python -m training.prepare --dataset DIR --out CACHE``: the training cache.

Reads an nnU-Net v2 raw dataset (``dataset.json``, ``imagesTr/<case>_0000<ending>``,
``labelsTr/<case><ending>`` with FLARE ids 0..13) and unlabelled images (``--unlabelled DIR``;
by default ``DIR/imagesUnlabelled`` when it exists). Every case is brought to the canonical
orientation inference uses, then resized with the transforms the exported graphs use: the
whole volume to the coarse input cube, and ``--fine-crops`` jittered crops around the organs
(unlabelled: the body) to the fine input cube. Layout: see ``training.data``.

A rerun reuses the entries whose sources (sha256) and stage settings are unchanged, rebuilds
the rest and deletes those of cases gone from the dataset. Settings count per stage: a new
``--fine-size`` rebuilds every fine entry but keeps the coarse ones, and a stage left out of
``--stages`` keeps its entries (unless their sources changed). A bad case prints
``ERROR <file>: <reason>`` on stderr and is skipped; the exit code is then 1. No cases, a bad
dataset folder or a malformed cache ``index.json`` (delete it to rebuild): exit code 2.
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from inference.hu import as_int16_hu
from inference.io import InputError, hu_array, read_ct
from inference.orientation import Orientation
from inference.roi import Box, body_box, grow_box

from .checkpoint import StageSettings
from .config import HelpFormatter
from .data import FORMAT, INDEX_NAME, KINDS, STAGES, CacheError, read_index
from .dataset import (
    Case,
    DatasetError,
    labelled_cases,
    read_labels,
    source_sha256,
    unlabelled_cases,
)
from .networks import network_spec
from .transforms import resize, resize_labels

SOURCE_KEYS = ("kind", "image_sha256", "labels_sha256")  # what an entry was built from
CHECKPOINT_S = 30.0  # rewrite the index this often, so an interrupted run keeps its work


def labels_box(labels: np.ndarray) -> Box | None:
    """Bounding box of every organ voxel together, or None when there is none."""
    out = []
    for axis in range(3):
        hit = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def crop_rng(seed: int, name: str, k: int, what: str = "") -> np.random.Generator:
    """Randomness of crop ``k`` of a case, from (seed, case, k) through sha256, not ``hash()``,
    which is salted per process."""
    key = f"{seed}\0{name}\0{k}{what}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def jittered(box: Box, k: int, fine: dict, name: str, spacing: tuple, shape: tuple) -> Box:
    """Crop ``k`` of a case: ``box`` with each face moved up to ``jitter_mm`` (crop 0: not)."""
    if k == 0:
        return box
    rng = crop_rng(fine["seed"], name, k)
    out = []
    for s, sp, n in zip(box, spacing, shape, strict=True):
        lo, hi = (round(rng.uniform(-1, 1) * fine["jitter_mm"] / sp) for _ in range(2))
        start = min(max(s.start + lo, 0), n - 1)
        out.append(slice(start, min(max(s.stop + hi, start + 1), n)))
    return tuple(out)  # type: ignore[return-value]


def fov_boxes(shape: tuple, spacing: tuple, coarse: dict, name: str) -> list[Box]:
    """The coarse crops: the whole volume, then (k >= 1) random fields of view.

    A field of view keeps a slab of the slices at least ``min_fov_mm`` deep (a scan may cover
    only the upper abdomen) and cuts up to ``fov_side_fraction`` off each in-plane side (a
    smaller reconstruction circle): the coarse network then meets such scans in training.
    """
    boxes = [tuple(slice(0, n) for n in shape)]
    for k in range(1, coarse["crops"]):
        rng = crop_rng(coarse["seed"], name, k, "fov")
        depth = min(shape[0], max(2, round(coarse["min_fov_mm"] / spacing[0])))
        depth = int(rng.integers(depth, shape[0] + 1))
        start = int(rng.integers(0, shape[0] - depth + 1))
        box = [slice(start, start + depth)]
        for n in shape[1:]:
            lo, hi = (int(rng.uniform(0, coarse["fov_side_fraction"]) * n) for _ in range(2))
            box.append(slice(lo, max(lo + 2, n - hi)))
        boxes.append(tuple(box))
    return boxes  # type: ignore[return-value]


def fine_boxes(
    hu: np.ndarray, labels: np.ndarray | None, fine: dict, name: str, spacing: tuple
) -> list[Box]:
    """The fine crops: around the organs; without any, the body; without a body, everything."""
    box = labels_box(labels) if labels is not None else None
    if box is None:
        box = body_box(hu)
    if box is None or any(s.stop - s.start < 2 for s in box):
        box = tuple(slice(0, n) for n in hu.shape)
    box = grow_box(box, fine["margin_mm"], spacing, hu.shape)
    crops = fine["crops"] if labels is not None else fine.get("unlabelled_crops", fine["crops"])
    return [jittered(box, k, fine, name, spacing, hu.shape) for k in range(crops)]


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``path`` under a temporary name, then rename: never a half file under its name."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_entry(out: Path, stem: str, hu: np.ndarray, labels: np.ndarray | None, size: int) -> None:
    """One entry: the HU resized as the graphs resize it, rounded to int16; its labels."""
    x = torch.from_numpy(np.array(hu, dtype=np.float32))[None, None]
    save_npy(out / f"{stem}.image.npy", as_int16_hu(resize(x, (size,) * 3)[0, 0].numpy()))
    if labels is not None:
        save_npy(out / f"{stem}.labels.npy", resize_labels(labels, size))


def build(case: Case, stages: list[str], settings: dict, out: Path) -> dict:
    """Write ``stages``' entries of ``case``; returns its index fields (entries, geometry)."""
    image = read_ct(case.image)
    orientation = Orientation.from_direction(image.GetDirection())
    hu = orientation.apply(as_int16_hu(np.asarray(hu_array(image, case.image))))
    labels = None
    if case.labels is not None:
        labels = orientation.apply(read_labels(case.labels, image, case.image))
    spacing = orientation.spacing(image.GetSpacing())
    record: dict = {
        "source_shape": list(image.GetSize()[::-1]),
        "shape": list(hu.shape),
        "spacing": list(spacing),
        "entries": {},
        "orientation": {"axes": list(orientation.axes), "flips": list(orientation.flips)},
    }
    stem = f"{case.kind}/{case.name}"
    if "coarse" in stages:
        boxes = fov_boxes(hu.shape, spacing, settings["coarse"], case.name)
        names = [f"coarse/{stem}"] + [f"coarse/{stem}_fov{k}" for k in range(1, len(boxes))]
        for entry, box in zip(names, boxes, strict=True):
            crop = None if labels is None else labels[box]
            write_entry(out, entry, hu[box], crop, settings["coarse"]["size"])
        record["entries"]["coarse"] = names
        record["coarse_boxes"] = [[[s.start, s.stop] for s in b] for b in boxes]
    if "fine" in stages:
        boxes = fine_boxes(hu, labels, settings["fine"], case.name, spacing)
        for k, box in enumerate(boxes):
            crop = None if labels is None else labels[box]
            write_entry(out, f"fine/{stem}_{k}", hu[box], crop, settings["fine"]["size"])
        record["entries"]["fine"] = [f"fine/{stem}_{k}" for k in range(len(boxes))]
        record["fine_boxes"] = [[[s.start, s.stop] for s in b] for b in boxes]
    return record


def entry_files(out: Path, record: dict, stage: str) -> list[Path]:
    parts = ("image", "labels") if record["kind"] == "labelled" else ("image",)
    return [out / f"{s}.{p}.npy" for s in record["entries"][stage] for p in parts]


def sources(case: Case, dataset: Path) -> dict:
    """Where the case comes from and the sha256 of each source (the key of reuse)."""
    fields = {"kind": case.kind}
    for key, path in (("image", case.image), ("labels", case.labels)):
        if path is not None:
            shown = path.relative_to(dataset) if path.is_relative_to(dataset) else path
            fields |= {key: str(shown), f"{key}_sha256": source_sha256(path)}
    return fields


def reusable(old: dict, settings: dict, out: Path) -> dict:
    """The stages of the old ``index`` whose settings still hold, their files all there."""
    if not old:
        return {}
    keep = [s for s in STAGES if s in settings and old["stages"].get(s) == settings[s]]
    cases = {}
    for name, record in old["cases"].items():
        entries = {s: e for s, e in record["entries"].items() if s in keep}
        record = {**record, "entries": entries}
        for stage in STAGES:
            if stage not in entries:
                record.pop(f"{stage}_boxes", None)
        if all(f.is_file() for s in entries for f in entry_files(out, record, s)):
            cases[name] = record
    return cases


def write_index(out: Path, settings: dict, cases: dict) -> None:
    used = {s for r in cases.values() for s in r["entries"]}
    index = {
        "format": FORMAT,
        "stages": {s: settings[s] for s in STAGES if s in used},
        "cases": dict(sorted(cases.items())),
    }
    tmp = out / f".{INDEX_NAME}.partial-{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)


def remove_stale(out: Path, cases: dict) -> int:
    """Delete files no index entry names (gone cases, old crops, partial files); their count."""
    keep = {f for r in cases.values() for s in r["entries"] for f in entry_files(out, r, s)}
    removed = 0
    for folder in (out / s / k for s in STAGES for k in KINDS):
        for f in folder.iterdir() if folder.is_dir() else ():
            if (f.name.endswith(".npy") or ".partial-" in f.name) and f not in keep:
                f.unlink()
                removed += f.name.endswith(".image.npy")
    return removed


def prepare_case(
    case: Case, prior: dict | None, dataset: Path, out: Path, stages: list[str], settings: dict
) -> tuple[dict, list[str]]:
    """The case's index record, after building the stages ``prior`` cannot supply; those."""
    record = sources(case, dataset)
    if prior is None or any(prior.get(k) != record.get(k) for k in SOURCE_KEYS):
        prior = {"entries": {}}
    todo = [s for s in stages if s not in prior["entries"]]
    if not todo:
        return prior | record, todo
    fresh = build(case, todo, settings, out)
    fresh["entries"] = prior["entries"] | fresh["entries"]
    return prior | record | fresh, todo


def load_old(out: Path) -> dict:
    """The cache's index, {} when there is none; ``CacheError`` when it is malformed: a
    silent rebuild could take hours, so the user decides (deleting it rebuilds all)."""
    path = out / INDEX_NAME
    if not path.exists():
        return {}
    try:
        return read_index(path)
    except CacheError as e:
        raise CacheError(f"{e}; delete it to rebuild the whole cache") from e


def _prepare_job(job: tuple) -> tuple[dict | None, list[str], str, float]:
    """``prepare_case`` in a worker: (record, stages built, error line or "", seconds)."""
    case, prior, dataset, out, stages, settings = job
    start = time.perf_counter()
    try:
        record, todo = prepare_case(case, prior, dataset, out, stages, settings)
    except InputError as e:  # its message starts with the file
        return None, [], str(e), time.perf_counter() - start
    except OSError as e:  # e.g. a source vanished, or the cache's disk is full
        return None, [], f"{case.image}: {e}", time.perf_counter() - start
    return record, todo, "", time.perf_counter() - start


def _one_thread() -> None:
    # Several workers share the cores: each resizes with one thread instead of all of them.
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _results(jobs: list[tuple], workers: int) -> Iterator[tuple]:
    """``_prepare_job`` of every job, in the jobs' order; in this process when ``workers`` is 1."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_prepare_job, jobs)
        return
    # spawn, not fork: the parent may hold torch's and ITK's thread pools.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(_prepare_job, jobs)


def prepare(
    cases: list[Case],
    dataset: Path,
    out: Path,
    stages: list[str],
    settings: dict,
    workers: int = 1,
) -> tuple[int, int, int, int]:
    """Build or reuse every case's entries, ``workers`` cases at a time; returns (reused,
    built, failed, removed)."""
    old = load_old(out)
    # A stage not asked for keeps its old settings, so its entries stay reusable.
    settings = {s: settings[s] if s in stages else old.get("stages", {}).get(s) for s in STAGES}
    settings = {s: v for s, v in settings.items() if v is not None}
    for s in STAGES:
        for k in KINDS:
            (out / s / k).mkdir(parents=True, exist_ok=True)
    current = reusable(old, settings, out)
    reused = built = failed = 0
    jobs = []
    for case in cases:
        if case.error:  # before the pop: its name may belong to a good case
            print(f"ERROR {case.error}", file=sys.stderr)
            failed += 1
            continue
        jobs.append((case, current.pop(case.name, None), dataset, out, stages, settings))
    last_write = time.monotonic()
    for n, (job, (record, todo, error, seconds)) in enumerate(
        zip(jobs, _results(jobs, workers), strict=True), 1
    ):
        if record is None:
            print(f"ERROR {error}", file=sys.stderr)
            failed += 1
            continue
        current[job[0].name] = record
        reused += not todo
        built += bool(todo)
        what = f"built {'+'.join(todo)}" if todo else "reused"
        print(f"[{n}/{len(jobs)}] {job[0].name}: {what} ({seconds:.1f} s)", file=sys.stderr)
        if time.monotonic() - last_write > CHECKPOINT_S:
            write_index(out, settings, current)
            last_write = time.monotonic()
    names = {c.name for c in cases}
    current = {k: v for k, v in current.items() if k in names}
    write_index(out, settings, current)
    return reused, built, failed, remove_stale(out, current)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.prepare",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", type=Path, required=True, help="nnU-Net v2 raw dataset folder")
    p.add_argument("--out", type=Path, required=True, help="cache folder (created)")
    p.add_argument("--unlabelled", type=Path, help="unlabelled images [DATASET/imagesUnlabelled]")
    p.add_argument("--no-unlabelled", action="store_true", help="prepare labelled cases only")
    side = {s: network_spec(s).input_size for s in STAGES}  # the networks' input cubes
    p.add_argument("--coarse-size", type=int, default=side["coarse"], help="coarse cube side")
    p.add_argument("--coarse-crops", type=int, default=1, help="whole volume + random FOVs")
    p.add_argument("--min-fov-mm", type=float, default=40.0, help="shallowest FOV slab")
    p.add_argument("--fov-side-fraction", type=float, default=0.15, help="max in-plane cut")
    p.add_argument("--fine-size", type=int, default=side["fine"], help="fine input cube side")
    # Training carries it into the checkpoint and export into the graph: inference crops so.
    p.add_argument(
        "--margin-mm", type=float, default=StageSettings.roi_margin_mm, help="fine crop margin"
    )
    p.add_argument("--jitter-mm", type=float, default=15.0, help="max move of a crop face")
    p.add_argument("--fine-crops", type=int, default=4, help="fine crops per case")
    p.add_argument(
        "--unlabelled-crops",
        type=int,
        help="fine crops per unlabelled case [--fine-crops]; 1 keeps a cache of thousands small",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="cases prepared at once, one core each (~2 GB of memory each for a 512x512x300 "
        "case); by default this machine's cores, at most 8",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the crops' randomness")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = p.parse_args(argv)
    crops = (args.fine_crops, args.coarse_crops, args.unlabelled_crops or 1, args.workers)
    if min(args.coarse_size, args.fine_size, *crops) < 1:
        p.error("sizes, crop counts and --workers must be positive")
    if args.jitter_mm < 0 or not 0 <= args.fov_side_fraction < 0.5:
        p.error("--jitter-mm must not be negative, --fov-side-fraction in [0, 0.5)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "coarse": {
            "size": args.coarse_size,
            "crops": args.coarse_crops,
            "min_fov_mm": args.min_fov_mm,
            "fov_side_fraction": args.fov_side_fraction,
            "seed": args.seed,
        },
        "fine": {
            "size": args.fine_size,
            "margin_mm": args.margin_mm,
            "jitter_mm": args.jitter_mm,
            "crops": args.fine_crops,
            "seed": args.seed,
        },
    }
    if args.unlabelled_crops not in (None, args.fine_crops):  # else caches stay as they were
        settings["fine"]["unlabelled_crops"] = args.unlabelled_crops
    unlabelled = args.unlabelled or args.dataset / "imagesUnlabelled"
    start = time.perf_counter()
    try:
        cases = labelled_cases(args.dataset)
        if not args.no_unlabelled and (args.unlabelled or unlabelled.is_dir()):
            cases += unlabelled_cases(unlabelled, {c.name for c in cases})
        if not cases:
            raise DatasetError(f"{args.dataset}: no cases (imagesTr/*_0000*, unlabelled)")
        args.out.mkdir(parents=True, exist_ok=True)
        stages = [s for s in STAGES if s in args.stages]
        reused, built, failed, removed = prepare(
            cases, args.dataset, args.out, stages, settings, args.workers
        )
    except (DatasetError, CacheError, OSError) as e:  # a case's own errors are its ERROR line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {built} cases built, {reused} reused, {failed} failed, {removed} stale "
        f"entries removed ({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
