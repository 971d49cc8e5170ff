"""``python -m inference.report LABELS [--ct CT] [--png FILE]``: what a segmentation holds.

Prints each organ's volume in mL (voxel count x voxel volume) and, with ``--png``, draws an
axial and a coronal slice through the organs' centre with the organs coloured on the CT
(``--ct``; without it, on black). Uses SimpleITK only, so it runs in the container too.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .organs import ORGANS
from .orientation import Orientation

WINDOW_HU = (-160.0, 240.0)  # the usual abdominal soft-tissue window, for display


def organ_volumes_ml(labels: np.ndarray, spacing_xyz: tuple[float, ...]) -> dict[int, float]:
    """Volume in mL of every organ 1..13 (0.0 when absent)."""
    counts = np.bincount(labels.ravel(), minlength=len(ORGANS) + 1)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    return {o.label: float(counts[o.label]) * voxel_ml for o in ORGANS}


def volume_table(volumes: dict[int, float]) -> str:
    lines = [f"{'organ':<22} {'mL':>9}"]
    lines += [f"{o.name:<22} {volumes[o.label]:>9.1f}" for o in ORGANS if volumes[o.label] > 0]
    missing = [o.name for o in ORGANS if volumes[o.label] == 0]
    if missing:
        lines.append(f"not found: {', '.join(missing)}")
    return "\n".join(lines)


def _slice_image(
    ct: np.ndarray, labels: np.ndarray, pixel_mm: tuple[float, float], target_mm: float
) -> sitk.Image:
    """One 2D slice as RGB with organs overlaid, resampled to square ``target_mm`` pixels."""
    lo, hi = WINDOW_HU
    gray = sitk.GetImageFromArray(((np.clip(ct, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8))
    lab = sitk.GetImageFromArray(labels.astype(np.uint8))
    for image in (gray, lab):
        image.SetSpacing((pixel_mm[1], pixel_mm[0]))  # SimpleITK: (column, row)
    size = [
        round(n * s / target_mm) for n, s in zip(gray.GetSize(), gray.GetSpacing(), strict=True)
    ]

    def resample(image: sitk.Image, interpolator: int) -> sitk.Image:
        grid = (size, sitk.Transform(), interpolator, (0.0, 0.0), (target_mm, target_mm))
        return sitk.Resample(image, *grid)

    labels_image = resample(lab, sitk.sitkNearestNeighbor)  # labels are never interpolated
    return sitk.LabelOverlay(resample(gray, sitk.sitkLinear), labels_image, opacity=0.5)


def draw(ct: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, ...], path: Path) -> None:
    """Axial and coronal slices through the organs' centre, side by side, as a PNG."""
    organs = np.argwhere(labels > 0)
    z, y, _ = (organs.mean(axis=0) if len(organs) else np.array(labels.shape) / 2).astype(int)
    # Square pixels, the longest side of the scan about 384 of them.
    target = max(n * s for n, s in zip(labels.shape, spacing_zyx, strict=True)) / 384
    axial = _slice_image(ct[z], labels[z], spacing_zyx[1:], target)
    # Coronal: superior at the top (canonical z grows towards the head).
    coronal = _slice_image(
        ct[::-1, y, :], labels[::-1, y, :], (spacing_zyx[0], spacing_zyx[2]), target
    )
    height = max(axial.GetHeight(), coronal.GetHeight())
    panels = []
    for image in (axial, coronal):
        array = sitk.GetArrayFromImage(image)
        pad = np.zeros((height - array.shape[0], *array.shape[1:]), np.uint8)
        panels.append(np.concatenate([array, pad]))
    out = sitk.GetImageFromArray(np.concatenate(panels, axis=1), isVector=True)
    sitk.WriteImage(out, str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("labels", type=Path, help="a label map written by python -m inference")
    p.add_argument("--ct", type=Path, help="the CT it was made from (for the PNG)")
    p.add_argument("--png", type=Path, help="write axial and coronal slices here")
    args = p.parse_args(argv)
    try:
        image = sitk.ReadImage(str(args.labels))
        ct_image = sitk.ReadImage(str(args.ct)) if args.ct else None
    except RuntimeError as e:
        print(f"error: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    labels = sitk.GetArrayFromImage(image)
    print(volume_table(organ_volumes_ml(labels, image.GetSpacing())))
    if args.png:
        o = Orientation.from_direction(image.GetDirection())
        ct = sitk.GetArrayFromImage(ct_image) if ct_image else np.full(labels.shape, -1000)
        if ct.shape != labels.shape:
            print(
                f"error: {args.ct}: shape {ct.shape} is not the labels' {labels.shape}",
                file=sys.stderr,
            )
            return 2
        draw(o.apply(ct), o.apply(labels), o.spacing(image.GetSpacing()), args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
