"""``python -m training.totalsegmentator --out DIR``: the real CTs we can reach, as a dataset.

The only real abdominal CTs with organ labels reachable from our machines are the test fixtures
of TotalSegmentator (Apache-2.0) in its source distribution on PyPI. Their
labels are that tool's model predictions, not manual annotations. This writes them as an
nnU-Net-style dataset in FLARE22 label ids for ``python -m training.prepare``:

- ``imagesTr/patientA_0000.nii.gz`` + ``labelsTr/patientA.nii.gz``: the bundled CT (femurs to
  lung bases, 3 mm, native phase), the training patient;
- ``imagesUnlabelled/chest_cta.nii.gz``: a 1.5 mm chest CTA reaching the upper abdomen, no labels;
- ``imagesTs/patientB/`` (20 DICOM slices, 0.98 x 0.98 x 2 mm, contrast, upper abdomen) +
  ``labelsTs/patientB.nii.gz`` on the DICOM grid: the held-out patient, never trained on.

``--held-out A`` swaps the patients' roles (patient A's CT and labels in ``imagesTs`` and
``labelsTs``, patient B's series as ``imagesTr/patientB_0000.nii.gz``): the two
leave-one-patient-out folds; ``--held-out none`` trains on both. A rerun into the same folder
replaces the other layout's files.

The sdist (38 MB) is fetched once with pip, checked against its pinned sha256, and kept in
``--downloads``.
"""

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import SimpleITK as sitk

from inference.organs import from_totalsegmentator

from .checkpoint import sha256_file
from .config import HelpFormatter
from .dataset import write_dataset_json

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "data" / "totalsegmentator"
SDIST = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
FIXTURES = "totalsegmentator-2.18.0/tests/reference_files/"


def to_flare(labels: sitk.Image) -> sitk.Image:
    """A TotalSegmentator v2 label map in FLARE22 ids, same geometry."""
    out = sitk.GetImageFromArray(from_totalsegmentator(sitk.GetArrayViewFromImage(labels)))
    out.CopyInformation(labels)
    return out


def fetch_sdist(downloads: Path) -> Path:
    """The pinned sdist, downloaded with pip unless already there; sha256-checked."""
    path = downloads / SDIST
    if not path.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "totalsegmentator==2.18.0",
            "-d",
            str(downloads),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    return path


def extract(sdist: Path, into: Path) -> Path:
    """The sdist's reference_files folder, extracted under ``into``."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(FIXTURES)]
        tar.extractall(into, members=members, filter="data")
    return into / FIXTURES


PATIENTS = ("A", "B")


def write_dataset(out: Path, fixtures: Path, held_out: str = "B") -> None:
    """The dataset with patient ``held_out`` ("A", "B" or "none") in imagesTs/labelsTs and the
    other patient(s) in imagesTr/labelsTr: the leave-one-patient-out folds and the final run."""
    if held_out not in (*PATIENTS, "none"):
        raise ValueError(f"held-out patient {held_out!r}: expected A, B or none")
    for sub in ("imagesTr", "labelsTr", "imagesUnlabelled", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stale in (*out.glob("images*/patient*"), *out.glob("labels*/patient*")):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()  # another fold's layout
    shutil.copy(
        fixtures / "aorta_report" / "example_ct.nii.gz",
        out / "imagesUnlabelled" / "chest_cta.nii.gz",
    )

    patient_a = to_flare(sitk.ReadImage(str(BUNDLED / "example_seg.nii.gz")))
    dicom = fixtures / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom)))
    grid = reader.Execute()
    # The labels are stored with y flipped: resample (nearest) onto the DICOM grid.
    labels = to_flare(sitk.ReadImage(str(fixtures / "example_seg_dicom.nii.gz")))
    patient_b = sitk.Resample(
        labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )

    for patient, image_labels in (("A", patient_a), ("B", patient_b)):
        name = f"patient{patient}"
        test = patient == held_out
        labels_dir = out / ("labelsTs" if test else "labelsTr")
        sitk.WriteImage(image_labels, str(labels_dir / f"{name}.nii.gz"), useCompression=True)
        if patient == "A":
            folder = "imagesTs" if test else "imagesTr"
            shutil.copy(BUNDLED / "example_ct.nii.gz", out / folder / f"{name}_0000.nii.gz")
        elif test:  # held out as it came: a DICOM series, which python -m inference reads
            shutil.copytree(dicom, out / "imagesTs" / name)
        else:  # training reads image files
            sitk.WriteImage(grid, str(out / "imagesTr" / f"{name}_0000.nii.gz"), True)

    write_dataset_json(
        out,
        "TotalSegmentator test fixtures in FLARE22 ids",
        len(PATIENTS) - (held_out in PATIENTS),
        held_out=held_out,
        source=f"{SDIST} (sha256 {SDIST_SHA256}), tests/reference_files; Apache-2.0",
    )


TS_DATASET = ROOT / "data" / "ts_dataset"


def add_test_subject(out: Path, subject: str) -> None:
    """``data/ts_dataset``'s ``subject`` (CT and label map, in FLARE ids) as a held-out case."""
    image = TS_DATASET / "images" / f"{subject}_0000.nii.gz"
    if not image.is_file():
        raise ValueError(f"{image}: no CT of {subject} in {TS_DATASET} (only its map, if any)")
    for sub in ("imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(image, out / "imagesTs" / image.name)
    labels = to_flare(sitk.ReadImage(str(TS_DATASET / "labels" / f"{subject}.nii.gz")))
    sitk.WriteImage(labels, str(out / "labelsTs" / f"{subject}.nii.gz"), useCompression=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.totalsegmentator",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--downloads", type=Path, default=ROOT / "build" / "downloads")
    p.add_argument(
        "--held-out",
        choices=[*PATIENTS, "none"],
        default="B",
        help="patient kept out of training (leave-one-patient-out folds; none: train on both)",
    )
    p.add_argument(
        "--test-subject",
        action="append",
        default=[],
        metavar="SNNNN",
        help="a subject of data/ts_dataset with its real CT (s0009), added to imagesTs/labelsTs "
        "in FLARE ids: a body held out (its map is then not to be painted for training)",
    )
    args = p.parse_args(argv)
    try:
        fixtures = extract(fetch_sdist(args.downloads), args.downloads / "extracted")
        write_dataset(args.out, fixtures, args.held_out)
        for subject in args.test_subject:
            add_test_subject(args.out, subject)
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
