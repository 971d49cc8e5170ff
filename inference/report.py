"""``python -m inference.report LABELS [--ct CT] [--png FILE] [--reference REF]``: what a
segmentation holds.

Prints each organ's volume in mL (voxel count x voxel volume). With ``--reference`` (a label
map on the same grid, in FLARE22 ids; ``--totalsegmentator`` converts a TotalSegmentator v2
map such as the bundled ``data/totalsegmentator/example_seg.nii.gz`` first), also the
reference's volume and the Dice score of every organ, and their mean over the organs in the
reference. With ``--png``, draws an axial and a coronal slice through the organs' centre, the
organs coloured on the CT (``--ct``; without it, on black), with a title, a legend and the
patient's directions at the edges: radiological view, the patient's right on the image's left,
the axial slice seen from the feet, the coronal from the front.

The table needs numpy and SimpleITK only, so it runs in the container too; the picture needs
Pillow (``pip install '.[report]'``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .organs import ORGANS, from_totalsegmentator
from .orientation import Orientation

WINDOW_HU = (-160.0, 240.0)  # the usual abdominal soft-tissue window, for display
OPACITY = 0.5
# One colour per organ 1..13, far apart in hue and lightness so neighbours stay apart.
COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 25, 75),  # liver
    2: (60, 180, 75),  # right kidney
    3: (0, 130, 200),  # spleen
    4: (255, 225, 25),  # pancreas
    5: (245, 130, 48),  # aorta
    6: (145, 30, 180),  # inferior vena cava
    7: (70, 240, 240),  # right adrenal gland
    8: (240, 50, 230),  # left adrenal gland
    9: (210, 245, 60),  # gallbladder
    10: (250, 190, 212),  # esophagus
    11: (0, 128, 128),  # stomach
    12: (170, 110, 40),  # duodenum
    13: (128, 128, 0),  # left kidney
}
PALETTE = np.zeros((256, 3), np.float32)  # label value -> colour, for the whole slice at once
PALETTE[list(COLOURS)] = list(COLOURS.values())


def organ_volumes_ml(labels: np.ndarray, spacing_xyz: tuple[float, ...]) -> dict[int, float]:
    """Volume in mL of every organ 1..13 (0.0 when absent)."""
    counts = np.bincount(labels.ravel(), minlength=len(ORGANS) + 1)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    return {o.label: float(counts[o.label]) * voxel_ml for o in ORGANS}


def dice(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|); NaN when both are empty, as FLARE's compute_dice_coefficient."""
    volume = np.count_nonzero(mask_gt) + np.count_nonzero(mask_pred)
    if volume == 0:
        return float("nan")
    return 2 * np.count_nonzero(mask_gt & mask_pred) / float(volume)


def volume_table(volumes: dict[int, float]) -> str:
    lines = [f"{'organ':<22} {'mL':>9}"]
    lines += [f"{o.name:<22} {volumes[o.label]:>9.1f}" for o in ORGANS if volumes[o.label] > 0]
    missing = [o.name for o in ORGANS if volumes[o.label] == 0]
    if missing:
        lines.append(f"not found: {', '.join(missing)}")
    return "\n".join(lines)


def score_table(labels: np.ndarray, reference: np.ndarray, spacing_xyz: tuple[float, ...]) -> str:
    """Volumes of both and the Dice score per organ in either; the mean over the reference's."""
    volumes = organ_volumes_ml(labels, spacing_xyz)
    ref_volumes = organ_volumes_ml(reference, spacing_xyz)
    lines = [f"{'organ':<22} {'mL':>9} {'reference mL':>13} {'DSC':>6}"]
    scores = []
    for o in ORGANS:
        if volumes[o.label] == 0 and ref_volumes[o.label] == 0:
            continue
        score = dice(reference == o.label, labels == o.label)
        if ref_volumes[o.label] > 0:
            scores.append(score)
        lines.append(
            f"{o.name:<22} {volumes[o.label]:>9.1f} {ref_volumes[o.label]:>13.1f} {score:>6.3f}"
        )
    lines.append(f"mean DSC over the {len(scores)} organs in the reference: {np.mean(scores):.3f}")
    # So that a reader comparing with the model card knows why aorta and IVC may differ.
    lines.append("(whole-volume DSC; benchmarks/evaluate.py scores as FLARE22 did)")
    return "\n".join(lines)


def _slice_rgb(
    ct: np.ndarray, labels: np.ndarray, pixel_mm: tuple[float, float], target_mm: float
) -> np.ndarray:
    """One 2D slice as RGB with the organs blended in, resampled to square ``target_mm`` pixels."""
    lo, hi = WINDOW_HU
    gray = sitk.GetImageFromArray(((np.clip(ct, lo, hi) - lo) / (hi - lo) * 255).astype(np.float32))
    lab = sitk.GetImageFromArray(labels.astype(np.uint8))
    for image in (gray, lab):
        image.SetSpacing((pixel_mm[1], pixel_mm[0]))  # SimpleITK: (column, row)
    size = [
        round(n * s / target_mm) for n, s in zip(gray.GetSize(), gray.GetSpacing(), strict=True)
    ]

    def resample(image: sitk.Image, interpolator: int) -> np.ndarray:
        grid = (size, sitk.Transform(), interpolator, (0.0, 0.0), (target_mm, target_mm))
        return sitk.GetArrayFromImage(sitk.Resample(image, *grid))

    g = resample(gray, sitk.sitkLinear)
    organs = resample(lab, sitk.sitkNearestNeighbor)  # labels are never interpolated
    rgb = np.repeat(g[..., None], 3, axis=2)
    inside = organs > 0
    rgb[inside] = (1 - OPACITY) * rgb[inside] + OPACITY * PALETTE[organs[inside]]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def draw(
    ct: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: tuple[float, ...],
    path: Path,
    title: str = "",
) -> None:
    """Axial and coronal slices through the organs' centre, a legend and a title, as a PNG.

    ``ct`` and ``labels`` are canonical (``inference.orientation``: axes towards superior,
    posterior, left), so image columns run from the patient's right to left.
    """
    from PIL import Image, ImageDraw, ImageFont  # the picture only: the table needs no Pillow

    organs = np.argwhere(labels > 0)
    z, y, _ = (organs.mean(axis=0) if len(organs) else np.array(labels.shape) / 2).astype(int)
    # Square pixels, the longest side of the scan about 384 of them.
    target = max(n * s for n, s in zip(labels.shape, spacing_zyx, strict=True)) / 384
    axial = _slice_rgb(ct[z], labels[z], spacing_zyx[1:], target)
    # Coronal: superior at the top (canonical z grows towards the head).
    coronal = _slice_rgb(
        ct[::-1, y, :], labels[::-1, y, :], (spacing_zyx[0], spacing_zyx[2]), target
    )
    font = ImageFont.load_default(size=14)
    shown = [o for o in ORGANS if (labels == o.label).any()]
    gap, top, legend_w, row = 8, 28, 190, 18
    height = max(axial.shape[0], coronal.shape[0], len(shown) * row + 8) + top
    width = axial.shape[1] + coronal.shape[1] + 2 * gap + legend_w
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    pen = ImageDraw.Draw(canvas)
    pen.text((gap, 6), title or "segmentation", fill=(255, 255, 255), font=font)
    left = 0
    for rgb, (up, down) in ((axial, ("A", "P")), (coronal, ("S", "I"))):
        h, w = rgb.shape[:2]
        canvas.paste(Image.fromarray(rgb), (left, top))
        marks = {
            "R": (left + 3, top + h // 2 - 7),
            "L": (left + w - 12, top + h // 2 - 7),
            up: (left + w // 2 - 4, top + 2),
            down: (left + w // 2 - 4, top + h - 17),
        }
        for letter, xy in marks.items():
            pen.text(xy, letter, fill=(255, 255, 0), font=font)
        left += w + gap
    for i, o in enumerate(shown):
        y0 = top + 4 + i * row
        pen.rectangle((left, y0, left + 12, y0 + 12), fill=COLOURS[o.label])
        pen.text((left + 18, y0 - 2), f"{o.label} {o.name}", fill=(255, 255, 255), font=font)
    canvas.save(path)


def read_reference(path: Path, labels: sitk.Image, totalsegmentator: bool) -> np.ndarray:
    """The reference's array in FLARE ids; ``ValueError`` unless it lies on the labels' grid."""
    image = sitk.ReadImage(str(path))
    if image.GetSize() != labels.GetSize() or not np.allclose(
        image.GetDirection(), labels.GetDirection(), atol=1e-4
    ):
        raise ValueError(f"{path}: not on the labels' grid ({image.GetSize()} voxels)")
    array = sitk.GetArrayFromImage(image)
    if totalsegmentator:
        return from_totalsegmentator(array)
    if array.min() < 0 or array.max() > len(ORGANS):
        raise ValueError(
            f"{path}: values {array.min()}..{array.max()} are not FLARE ids 0-13 "
            "(a TotalSegmentator map needs --totalsegmentator)"
        )
    return array


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("labels", type=Path, help="a label map written by python -m inference")
    p.add_argument("--ct", type=Path, help="the CT it was made from (for the picture)")
    p.add_argument("--png", type=Path, help="write the picture here")
    p.add_argument("--reference", type=Path, help="reference labels on the same grid: DSC")
    p.add_argument(
        "--totalsegmentator",
        action="store_true",
        help="the reference is in TotalSegmentator v2 ids (converted to FLARE ids)",
    )
    args = p.parse_args(argv)
    try:
        image = sitk.ReadImage(str(args.labels))
        ct_image = sitk.ReadImage(str(args.ct)) if args.ct else None
        labels = sitk.GetArrayFromImage(image)
        if args.reference:
            reference = read_reference(args.reference, image, args.totalsegmentator)
            print(score_table(labels, reference, image.GetSpacing()))
        else:
            print(volume_table(organ_volumes_ml(labels, image.GetSpacing())))
    except (RuntimeError, ValueError) as e:  # SimpleITK reports unreadable files as RuntimeError
        print(f"error: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    if args.png:
        o = Orientation.from_direction(image.GetDirection())
        ct = sitk.GetArrayFromImage(ct_image) if ct_image else np.full(labels.shape, -1000)
        if ct.shape != labels.shape:
            print(
                f"error: {args.ct}: shape {ct.shape} is not the labels' {labels.shape}",
                file=sys.stderr,
            )
            return 2
        title = f"{args.labels.name}" + (f" on {args.ct.name}" if args.ct else "")
        draw(o.apply(ct), o.apply(labels), o.spacing(image.GetSpacing()), args.png, title)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
