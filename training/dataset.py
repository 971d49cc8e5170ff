"""Reading an nnU-Net v2 raw dataset for ``training.prepare``: its cases and checked labels.

``dataset.json``, ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>`` with FLARE ids
0..13, and a folder of unlabelled images (any names).
"""

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.io import InputError, case_name, find_inputs, read_ct
from inference.organs import LABEL_NAMES, NUM_ORGANS

from .checkpoint import sha256_file

# What dataset.json's "labels" must say: FLARE22's organs by name, each with its id.
FLARE_LABELS = {name: label for label, name in LABEL_NAMES.items()}


class DatasetError(ValueError):
    """The dataset folder as a whole is unusable (exit code 2)."""


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    labels: Path | None  # None: unlabelled
    error: str = ""  # found at discovery (e.g. a duplicate name): skip with this reason

    @property
    def kind(self) -> str:
        return "unlabelled" if self.labels is None else "labelled"


def write_dataset_json(dataset: Path, name: str, num_training: int, **extra: str) -> None:
    """A CT dataset's ``dataset.json`` in FLARE22 label ids (the layout ``labelled_cases``
    reads), with ``extra`` keys (its source, a held-out patient) after the standard ones."""
    meta = {
        "name": name,
        "channel_names": {"0": "CT"},
        "labels": FLARE_LABELS,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        **extra,
    }
    (dataset / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")


def labelled_cases(dataset: Path) -> list[Case]:
    """The cases of ``imagesTr``, after checking ``dataset.json``."""
    meta_path = dataset / "dataset.json"
    if not meta_path.is_file() or not (dataset / "imagesTr").is_dir():
        raise DatasetError(f"{dataset}: not an nnU-Net dataset (needs dataset.json, imagesTr/)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path}: unreadable ({e})") from e
    if len(meta.get("channel_names", {"0": "CT"})) != 1:
        raise DatasetError(f"{meta_path}: {meta['channel_names']} has several channels, not CT")
    check_labels(meta.get("labels"), meta_path)
    ending = meta.get("file_ending", ".nii.gz")
    suffix = f"_0000{ending}"
    images = sorted(p for p in (dataset / "imagesTr").iterdir() if p.name.endswith(suffix))
    cases = [
        Case(p.name[: -len(suffix)], p, dataset / "labelsTr" / p.name.replace(suffix, ending))
        for p in images
    ]
    if "numTraining" in meta and meta["numTraining"] != len(cases):
        print(
            f"warning: {meta_path}: numTraining {meta['numTraining']}, found {len(cases)}",
            file=sys.stderr,
        )
    return cases


def _plain(name: object) -> str:
    """A label name as compared: letter case, underscores and hyphens do not count."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def check_labels(labels: object, meta_path: Path) -> None:
    """``DatasetError`` unless ``labels`` name FLARE22's organs with their ids: another
    dataset's order (AMOS, BTCV) would be trained with the wrong meanings."""
    want = {_plain(name): label for name, label in FLARE_LABELS.items()}
    got = (
        {_plain(name): label for name, label in labels.items()} if isinstance(labels, dict) else {}
    )
    if got == want:
        return
    problems = [f"{n!r} is {got[n]!r}, not {k}" for n, k in want.items() if got.get(n, k) != k]
    if unknown := sorted(set(got) - set(want)):
        problems.append(f"unknown names {unknown}")
    if missing := [n for n in want if n not in got]:
        problems.append(f"missing {missing}")
    raise DatasetError(
        f"{meta_path}: labels must map FLARE22's names to their ids "
        f"({json.dumps(FLARE_LABELS)}; letter case and _ do not count): "
        + ("; ".join(problems) if got else f"it has {labels!r}")
    )


def unlabelled_cases(folder: Path, taken: set[str]) -> list[Case]:
    """Images of ``folder`` (any names); a name already taken is an error for that file."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: unlabelled folder does not exist")
    cases, seen = [], set(taken)
    for p in find_inputs(folder):
        name = case_name(p)
        error = f"{p}: case name {name!r} is already used by another image" if name in seen else ""
        seen.add(name)
        cases.append(Case(name, p, None, error))
    return cases


def source_sha256(path: Path) -> str:
    """sha256 of a file; of a DICOM folder, of its files' names and contents in order."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        digest.update(p.name.encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return digest.hexdigest()


def read_labels(path: Path, image: sitk.Image, image_path: Path) -> np.ndarray:
    """Labels matching ``image``'s grid, as uint8 FLARE ids; ``InputError`` naming both files."""
    if not path.is_file():
        raise InputError(f"{path}: missing, the label file of {image_path}")
    labels = read_ct(path)
    checks = [
        ("size", labels.GetSize(), image.GetSize(), 0),
        ("spacing", labels.GetSpacing(), image.GetSpacing(), 1e-4),
        ("origin", labels.GetOrigin(), image.GetOrigin(), 1e-3),
        ("direction", labels.GetDirection(), image.GetDirection(), 1e-4),
    ]
    for what, got, want, tol in checks:
        if not np.allclose(got, want, rtol=0, atol=tol):
            raise InputError(f"{path}: {what} {got} does not match {what} {want} of {image_path}")
    array = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise InputError(f"{path}: label values are not integers")
    if array.min() < 0 or array.max() > NUM_ORGANS:
        bad = np.unique(array[(array < 0) | (array > NUM_ORGANS)])[:5].tolist()
        raise InputError(f"{path}: label values {bad} are not FLARE ids 0..{NUM_ORGANS}")
    return array.astype(np.uint8)
