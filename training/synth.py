"""``python -m training.synth``: synthetic CTs painted from a TotalSegmentator label map.

We hold one labelled patient (python -m training.totalsegmentator). To show the networks other
intensities, each case paints every structure of a TotalSegmentator v2 "total" label map with
HU drawn for a random contrast phase (native, arterial, portal-venous), puts fat and soft tissue
around the organs, air outside the body, blurs for partial volume, adds scanner noise, and
resamples to a random slice thickness and in-plane resolution. The labels are the map's own,
in FLARE22 ids.

    python -m training.synth --labels data/totalsegmentator/example_seg.nii.gz \\
        --out DATASET --count 20 --seed 0

writes ``DATASET/imagesTr/synth_NNN_0000.nii.gz`` and ``DATASET/labelsTr/synth_NNN.nii.gz``
(and a minimal ``dataset.json`` when there is none), nothing else. Case ``NNN`` depends only on
``--seed`` and ``NNN``, so a larger ``--count`` adds cases and keeps the earlier ones.

Speed on our 2-core CPU, median of 5 per run, lowest / highest of five runs made while other
jobs shared the CPU (load average 3-6): ``.venv/bin/python -m training.synth --benchmark``.
Synthesis 0.27 / 0.49 s on the bundled map (112 x 101 x 122 at 3 mm) and 2.7 / 5.8 s on it
resampled to 1.5 mm (223 x 201 x 243; the cost follows the voxel count); a whole case from the
bundled map (synthesis, random resampling to at most 200 x 256 x 256, writing both files)
0.74 / 1.7 s, half of it ITK resampling and gzip writing. Finer maps are painted on a grid
coarsened to those caps (13 M voxels at most), so no case costs much more than the 1.5 mm one.

The HU table holds rough literature values, not measurements: the point is plausible variety,
not a scanner model.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from inference.io import InputError, read_ct, write_image
from inference.organs import TOTALSEGMENTATOR_TO_FLARE

from .config import HelpFormatter
from .dataset import write_dataset_json
from .totalsegmentator import BUNDLED, to_flare

log = logging.getLogger(__name__)

PHASES = ("native", "arterial", "venous")
HU = tuple[float, float, float]  # mean HU low, mean HU high, largest within-structure spread


class Tissue(NamedTuple):
    """HU per phase of a tissue group; a rim/core pair for bone, kidney, bowel and airway."""

    hu: dict[str, HU]  # the whole structure, or its rim when it has cores
    # Interior contents, one drawn per structure (None: as the rim); per phase, None: as the rim.
    cores: tuple[dict[str, HU | None] | None, ...] = ()
    rim_mm: tuple[float, float] = (0.0, 0.0)  # rim thickness range


def _same(hu: HU) -> dict[str, HU]:
    return dict.fromkeys(PHASES, hu)


_GAS = _same((-1000, -900, 10))
_FLUID = _same((0, 20, 4))

# Rough HU per tissue group and phase (native / arterial ~35 s / portal-venous ~70 s).
TISSUES: dict[str, Tissue] = {
    "air": Tissue(_same((-1010, -990, 0))),
    "lung": Tissue(_same((-900, -800, 40))),  # spread: vessels and septa
    "fat": Tissue(_same((-120, -80, 10))),
    "soft_tissue": Tissue(_same((30, 60, 10))),  # unlabelled or unknown structures
    "muscle": Tissue({"native": (40, 60, 8), "arterial": (45, 65, 8), "venous": (50, 70, 8)}),
    # Cortex over trabecular bone; iodine does not reach either in any amount.
    "bone": Tissue(_same((500, 1000, 40)), (_same((120, 300, 40)),), (1.0, 2.5)),
    "cartilage": Tissue(_same((80, 200, 30))),  # costal cartilage, partly calcified
    "liver": Tissue({"native": (50, 65, 8), "arterial": (60, 80, 8), "venous": (100, 130, 8)}),
    # Arterial-phase spleen is mottled: the large spread.
    "spleen": Tissue({"native": (45, 55, 6), "arterial": (80, 140, 30), "venous": (110, 130, 8)}),
    # Cortex and medulla differ in the arterial (corticomedullary) phase only.
    "kidney": Tissue(
        {"native": (30, 40, 5), "arterial": (150, 200, 15), "venous": (150, 200, 10)},
        ({"native": None, "arterial": (60, 110, 10), "venous": None},),
        (4.0, 7.0),
    ),
    "pancreas": Tissue({"native": (40, 50, 6), "arterial": (90, 120, 10), "venous": (80, 110, 8)}),
    "adrenal": Tissue({"native": (30, 50, 6), "arterial": (60, 90, 10), "venous": (60, 90, 10)}),
    "artery": Tissue({"native": (35, 50, 5), "arterial": (250, 400, 15), "venous": (150, 200, 10)}),
    "vein": Tissue({"native": (35, 50, 5), "arterial": (50, 100, 10), "venous": (130, 180, 10)}),
    # Chambers, left and right blood and myocardium together.
    "heart": Tissue({"native": (35, 50, 5), "arterial": (200, 350, 50), "venous": (130, 170, 20)}),
    # Wall HU; the lumen: collapsed (as the wall), fluid, faeces or gas, one per structure.
    "bowel": Tissue(
        {"native": (30, 60, 8), "arterial": (80, 120, 10), "venous": (80, 120, 10)},
        (None, _FLUID, _same((-400, -100, 200)), _GAS),
        (2.0, 4.0),
    ),
    "fluid": Tissue(_FLUID),  # bile, urine (no excretory phase), cysts
    "thyroid": Tissue(
        {"native": (80, 120, 10), "arterial": (130, 200, 15), "venous": (120, 180, 15)}
    ),
    "airway": Tissue(_same((30, 60, 8)), (_GAS,), (1.5, 3.0)),
    "neural": Tissue(_same((10, 35, 5))),  # behind the blood-brain barrier; cord amid CSF
}

# TotalSegmentator v2 "total" class id -> tissue group (names from its map_to_binary.py).
TS_TISSUE: dict[int, str] = {
    1: "spleen",
    2: "kidney",  # kidney_right
    3: "kidney",  # kidney_left
    4: "fluid",  # gallbladder
    5: "liver",
    6: "bowel",  # stomach
    7: "pancreas",
    8: "adrenal",  # adrenal_gland_right
    9: "adrenal",  # adrenal_gland_left
    # 10-14: lung lobes, upper and lower left, upper, middle and lower right.
    **dict.fromkeys(range(10, 15), "lung"),
    15: "muscle",  # esophagus: a collapsed muscular tube
    16: "airway",  # trachea
    17: "thyroid",  # thyroid_gland
    18: "bowel",  # small_bowel
    19: "bowel",  # duodenum
    20: "bowel",  # colon
    21: "fluid",  # urinary_bladder
    22: "soft_tissue",  # prostate
    23: "fluid",  # kidney_cyst_left
    24: "fluid",  # kidney_cyst_right
    25: "bone",  # sacrum
    **dict.fromkeys(range(26, 51), "bone"),  # vertebrae S1, L5..L1, T12..T1, C7..C1
    51: "heart",
    52: "artery",  # aorta
    53: "artery",  # pulmonary_vein: oxygenated blood, enhances with the left heart
    54: "artery",  # brachiocephalic_trunk
    55: "artery",  # subclavian_artery_right
    56: "artery",  # subclavian_artery_left
    57: "artery",  # common_carotid_artery_right
    58: "artery",  # common_carotid_artery_left
    59: "vein",  # brachiocephalic_vein_left
    60: "vein",  # brachiocephalic_vein_right
    61: "artery",  # atrial_appendage_left: left-atrial blood
    62: "vein",  # superior_vena_cava
    63: "vein",  # inferior_vena_cava
    64: "vein",  # portal_vein_and_splenic_vein
    65: "artery",  # iliac_artery_left
    66: "artery",  # iliac_artery_right
    67: "vein",  # iliac_vena_left
    68: "vein",  # iliac_vena_right
    **dict.fromkeys(range(69, 79), "bone"),  # humerus, scapula, clavicula, femur, hip (l, r)
    79: "neural",  # spinal_cord
    **dict.fromkeys(range(80, 90), "muscle"),  # gluteus max/med/min, autochthon, iliopsoas
    90: "neural",  # brain
    91: "bone",  # skull
    **dict.fromkeys(range(92, 117), "bone"),  # ribs left 1-12, right 1-12, sternum
    117: "cartilage",  # costal_cartilages
}

BODY_GRID_MM = 6.0  # the body outline is worked out on blocks about this size
BODY_CLOSING_MM = 30.0  # bridges the gaps between labelled structures inside the trunk
# From the closed labels outwards: abdominal wall muscle (TotalSegmentator has no label for
# it), subcutaneous fat, skin. Their sum is the margin the labels are grown by; 10-30 mm of fat
# alone left the body smaller than patient A's (47% of the volume, against 64%).
WALL_MM = (5.0, 15.0)
SUBCUTANEOUS_FAT_MM = (10.0, 30.0)
SKIN_MM = (1.5, 3.0)
SOFT_TISSUE_SHARE = (0.1, 0.3)  # of the fat among the organs: unlabelled vessels, bowel, nodes
MAX_INPLANE, MAX_SLICES = 256, 200  # keeps a case cheap for a 2-core CPU


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled in each axial slice (no connectivity between slices)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_fill_holes(mask, structure)


def _edt(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """float32 mm from each True voxel to the nearest False one (scipy's own distance step
    works in float64 over index grids: twice the time of the feature transform it follows)."""
    nearest = ndi.distance_transform_edt(
        mask, sampling=spacing_zyx, return_distances=False, return_indices=True
    )
    d2 = np.zeros(mask.shape, np.float32)
    for axis, (n, s) in enumerate(zip(mask.shape, spacing_zyx, strict=True)):
        index = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        step = (nearest[axis].astype(np.float32) - index) * np.float32(s)
        d2 += step * step
    return np.sqrt(d2, out=d2)


def body_depth(labels: np.ndarray, spacing_zyx, margin_mm: float) -> np.ndarray:
    """float32 mm below the body's surface (<= 0 outside): the labels closed, grown by
    ``margin_mm`` and filled per axial slice.

    Worked out with distance transforms (their cost does not grow with the radii) on blocks of
    about ``BODY_GRID_MM`` (any label in a block counts), then interpolated back to the voxels,
    so the outline stays smooth.
    """
    k = [max(1, int(BODY_GRID_MM / s)) for s in spacing_zyx]
    padded = np.pad(labels != 0, [(0, -n % f) for n, f in zip(labels.shape, k, strict=True)])
    z, y, x = (n // f for n, f in zip(padded.shape, k, strict=True))
    blocks = padded.reshape(z, k[0], y, k[1], x, k[2]).any(axis=(1, 3, 5))
    if not blocks.any():
        return np.full(labels.shape, -np.inf, np.float32)
    coarse = [s * f for s, f in zip(spacing_zyx, k, strict=True)]
    grown = _edt(~blocks, coarse) <= BODY_CLOSING_MM
    if grown.all():  # nothing outside to measure from: the body fills the volume
        return np.full(labels.shape, np.inf, np.float32)
    closed = _fill_slices((_edt(grown, coarse) > BODY_CLOSING_MM) | blocks)
    # Signed: below the closed labels' surface, plus the margin grown around them.
    depth = margin_mm - _edt(~closed, coarse) + _edt(closed, coarse)
    depth[_fill_slices(depth > 0) & (depth <= 0)] = margin_mm  # gaps the margin closed: fat
    if k != [1, 1, 1]:
        depth = ndi.zoom(depth, k, order=1, grid_mode=True, mode="nearest")
    return depth[: labels.shape[0], : labels.shape[1], : labels.shape[2]]


def boundary_depth(labels: np.ndarray, spacing_zyx) -> np.ndarray:
    """mm from each voxel's centre to the nearest voxel whose label differs from a neighbour's."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(3):
        step = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= step
        edge[tuple(hi)] |= step
    if not edge.any():
        return np.full(labels.shape, np.inf, np.float32)
    return _edt(~edge, spacing_zyx)


def smooth_noise(shape, spacing_zyx, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise low-passed with ``sigma_mm``, rescaled to unit standard deviation."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    ndi.gaussian_filter(noise, [sigma_mm / s for s in spacing_zyx], output=noise, truncate=3.0)
    return noise / max(float(noise.std()), 1e-6)


def _at(low_high: tuple[float, ...], u: float) -> float:
    return low_high[0] + u * (low_high[1] - low_high[0])


def tissue_of(ts_id: int) -> str:
    """The tissue group of a TotalSegmentator id; unknown ids are soft tissue, with a warning."""
    if ts_id not in TS_TISSUE:
        log.warning("TotalSegmentator id %d is not in the table: painted as soft tissue", ts_id)
    return TS_TISSUE.get(ts_id, "soft_tissue")


def _structure_tables(ids: np.ndarray, phase: str, rng: np.random.Generator) -> np.ndarray:
    """Per label id: rim mean, core mean, spread, rim thickness (mm); label 0 is fat.

    Five uniforms per structure whatever the phase, each placed within the phase's range: one
    generator state is one patient, and in a later phase every structure is as bright or
    brighter wherever its range is.
    """
    table = np.zeros((int(ids.max()) + 1, 4), np.float32)
    for i in ids.tolist():
        tissue = TISSUES["fat" if i == 0 else tissue_of(i)]
        u_mean, u_spread, u_core, u_content, u_rim = rng.random(5)
        rim = _at(tissue.hu[phase], u_mean)
        core = rim
        if tissue.cores:
            content = tissue.cores[int(u_content * len(tissue.cores))]
            if content is not None and content[phase] is not None:
                core = _at(content[phase], u_core)
        spread = (0.5 + 0.5 * u_spread) * tissue.hu[phase][2]
        table[i] = rim, core, spread, _at(tissue.rim_mm, u_rim)
    return table


def _paint(labels: np.ndarray, spacing, phase: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """float32 HU of every structure (label 0: fat), and the unit texture field it used."""
    ids = np.unique(labels)
    table = _structure_tables(ids, phase, rng)
    rim, core, spread, rim_mm = (table[:, k][labels] for k in range(4))
    if np.any(table[ids, 0] != table[ids, 1]):
        # The rim's share of each voxel: partial volume of a rim rim_mm thick over a voxel as
        # wide as the finest spacing (bone cortex, renal cortex, bowel and airway walls).
        depth = boundary_depth(labels, spacing)
        w = np.clip((rim_mm - depth) / min(spacing), 0.0, 1.0)
        image = core + w * (rim - core)
    else:
        image = rim
    texture = smooth_noise(labels.shape, spacing, rng.uniform(4.0, 8.0), rng)
    image += spread * texture
    return image, texture


def _surround(image: np.ndarray, labels: np.ndarray, spacing, phase: str, texture, rng) -> None:
    """In place: soft tissue among the fat, abdominal wall, skin, and air outside the body."""
    skin, fat, wall, share, u_soft, u_wall, u_skin, u_air = (
        *(rng.uniform(*r) for r in (SKIN_MM, SUBCUTANEOUS_FAT_MM, WALL_MM, SOFT_TISSUE_SHARE)),
        *rng.random(4),
    )
    soft, muscle = TISSUES["soft_tissue"].hu[phase], TISSUES["muscle"].hu[phase]
    depth = body_depth(labels, spacing, skin + fat + wall)
    free = (labels == 0) & (depth > 0)
    if free.any():
        patches = free & (texture > np.quantile(texture[free], 1.0 - share))
        image[patches] = _at(soft, u_soft) + soft[2] * texture[patches]
    band = free & (depth > skin + fat) & (depth <= skin + fat + wall)
    image[band] = _at(muscle, u_wall) + muscle[2] * texture[band]
    image[free & (depth <= skin)] = _at(soft, u_skin)
    image[depth <= 0] = _at(TISSUES["air"].hu[phase], u_air)


def synthesize(
    labels_ts: np.ndarray, spacing_zyx, rng: np.random.Generator, phase: str | None = None
) -> np.ndarray:
    """A ``(z, y, x)`` int16 HU volume painted from a ``(z, y, x)`` TotalSegmentator v2 map.

    ``phase`` is one of ``PHASES``, or None for a random one (drawn first). Every draw comes
    from ``rng`` and their number does not depend on the phase: one generator state gives one
    volume, and with another phase the same patient in that phase.
    """
    if phase is None:
        phase = str(rng.choice(PHASES))
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    if labels_ts.ndim != 3 or not np.issubdtype(labels_ts.dtype, np.integer) or not labels_ts.size:
        raise ValueError(f"labels: {labels_ts.shape} {labels_ts.dtype}, expected 3D integers")
    if labels_ts.min() < 0:
        raise ValueError(f"labels: label {labels_ts.min()} is negative")
    spacing = tuple(float(s) for s in spacing_zyx)
    image, texture = _paint(labels_ts, spacing, phase, rng)
    _surround(image, labels_ts, spacing, phase, texture, rng)
    # Partial volume before noise: the scanner blurs anatomy, its noise comes after. The sigma is
    # in voxels, the same on each axis: in mm it grows with the spacing, as partial volume does.
    # Up to 1 voxel blurred 3 mm voxels more than patient A's own.
    ndi.gaussian_filter(image, rng.uniform(0.4, 0.8), output=image, truncate=3.0)
    shape = labels_ts.shape
    image += rng.uniform(5.0, 20.0) * smooth_noise(shape, spacing, rng.uniform(1.0, 3.0), rng)
    image += rng.uniform(5.0, 25.0) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def resampled_size(size_xyz, spacing_xyz, new_spacing_xyz) -> list[int]:
    """Voxels per axis at the new spacing from the same first voxel: every sample point within
    the span of the source's voxel centres (nothing extrapolated), the extent within a voxel."""
    return [
        int(np.floor((n - 1) * s / t + 1e-6)) + 1
        for n, s, t in zip(size_xyz, spacing_xyz, new_spacing_xyz, strict=True)
    ]


def _resampled(image: sitk.Image, spacing, interpolator, value: float) -> sitk.Image:
    return sitk.Resample(
        image,
        resampled_size(image.GetSize(), image.GetSpacing(), spacing),
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        value,
        image.GetPixelID(),
    )


def capped_spacing(size_xyz, spacing_xyz, wanted_xyz) -> tuple[float, float, float]:
    """``wanted_xyz``, coarsened where the grid would exceed ``MAX_INPLANE`` voxels across or
    ``MAX_SLICES`` slices (the same extent, fewer voxels)."""
    caps = (MAX_INPLANE, MAX_INPLANE, MAX_SLICES)
    x, y, z = (
        max(float(w), (n - 1) * s / (cap - 1))
        for n, s, w, cap in zip(size_xyz, spacing_xyz, wanted_xyz, caps, strict=True)
    )
    return x, y, z


def random_spacing(size_xyz, spacing_xyz, rng: np.random.Generator) -> tuple[float, float, float]:
    """Random in-plane 0.6-1.5 mm and slice 1-5 mm spacing (the third ITK axis is the slice
    axis), within the caps."""
    inplane = rng.uniform(0.6, 1.5)
    spacing = capped_spacing(size_xyz, spacing_xyz, (inplane, inplane, rng.uniform(1.0, 5.0)))
    inplane = max(spacing[:2])  # square pixels, as scanners make them
    return inplane, inplane, spacing[2]


def resample_random(
    image: sitk.Image, labels: sitk.Image, rng: np.random.Generator
) -> tuple[sitk.Image, sitk.Image]:
    """Both on one random grid (``random_spacing``), same origin and direction.

    The image is linearly interpolated (after a Gaussian along each axis that gets coarser, so
    that a thick slice averages what it covers) and keeps its pixel type; the labels take the
    nearest voxel.
    """
    spacing = random_spacing(image.GetSize(), image.GetSpacing(), rng)
    array = sitk.GetArrayFromImage(image)
    smooth = array.astype(np.float32)
    # A box as wide as the new voxel has a std of width / sqrt(12); the old voxel has its own.
    sigma = [
        np.sqrt(max(new**2 - old**2, 0.0) / 12.0) / old
        for new, old in zip(spacing[::-1], image.GetSpacing()[::-1], strict=True)
    ]
    ndi.gaussian_filter(smooth, sigma, output=smooth, truncate=3.0)
    floating = sitk.GetImageFromArray(smooth)
    floating.CopyInformation(image)
    resampled = _resampled(floating, spacing, sitk.sitkLinear, -1024.0)
    values = sitk.GetArrayViewFromImage(resampled)
    if np.issubdtype(array.dtype, np.integer):  # round, where a cast would truncate
        values = np.rint(values)
    out = sitk.GetImageFromArray(values.astype(array.dtype))
    out.CopyInformation(resampled)
    return out, _resampled(labels, spacing, sitk.sitkNearestNeighbor, 0.0)


def check_label_map(labels: sitk.Image, path: Path) -> np.ndarray:
    """The label array, or ``InputError`` naming the file: integer ids 0..255, some FLARE organ."""
    array = sitk.GetArrayFromImage(labels)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise InputError(f"{path}: label values are not integers ({array.dtype} voxels)")
    if array.min() < 0 or array.max() > 255:
        raise InputError(f"{path}: label values {array.min()}..{array.max()} are not in 0..255")
    ids = np.unique(array).astype(int)
    if not set(ids.tolist()) & set(TOTALSEGMENTATOR_TO_FLARE):
        raise InputError(
            f"{path}: holds ids {ids.tolist()[:8]}, none of the FLARE organs' TotalSegmentator "
            f"ids {sorted(TOTALSEGMENTATOR_TO_FLARE)}"
        )
    return array.astype(np.uint8)


def synth_case(
    labels: sitk.Image, rng: np.random.Generator, keep_grid: bool = False
) -> tuple[sitk.Image, sitk.Image, str]:
    """One case from a checked uint8 TotalSegmentator map: int16 CT, uint8 FLARE labels on the
    same grid, and the phase. Painted on the map's grid, coarsened to the caps unless
    ``keep_grid`` (a map at a CT's full resolution would cost ten times more), then resampled
    at random unless ``keep_grid``."""
    if not keep_grid:
        size, spacing = labels.GetSize(), labels.GetSpacing()
        capped = capped_spacing(size, spacing, spacing)
        if capped != spacing:
            labels = _resampled(labels, capped, sitk.sitkNearestNeighbor, 0.0)
    phase = str(rng.choice(PHASES))
    hu = synthesize(sitk.GetArrayViewFromImage(labels), labels.GetSpacing()[::-1], rng, phase)
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(labels)
    flare = to_flare(labels)
    if not keep_grid:
        image, flare = resample_random(image, flare, rng)
    return image, flare, phase


def ensure_dataset_json(out: Path, source: Path) -> None:
    """A minimal nnU-Net ``dataset.json`` if the dataset has none; else its ``numTraining``
    updated to the cases ``imagesTr`` now holds (the rest kept), so that ``training.prepare``
    does not warn about the cases added."""
    count = len(list((out / "imagesTr").glob("*_0000.nii.gz")))
    path = out / "dataset.json"
    if not path.exists():
        write_dataset_json(
            out,
            "synthetic CTs from TotalSegmentator label maps, FLARE22 ids",
            count,
            source=f"python -m training.synth --labels {source}",
        )
        return
    meta = json.loads(path.read_text())
    if meta.get("numTraining") != count:
        meta["numTraining"] = count
        path.write_text(json.dumps(meta, indent=1) + "\n")


def write_case(
    labels: sitk.Image, rng: np.random.Generator, out: Path, name: str, keep_grid: bool = False
) -> tuple[Path, sitk.Image, str]:
    """``synth_case`` written into the dataset ``out``: the image's path, the image, the phase."""
    image, flare, phase = synth_case(labels, rng, keep_grid)
    # Labels first: a case is listed by its image, which then always has its labels.
    write_image(flare, out / "labelsTr" / f"{name}.nii.gz")
    path = out / "imagesTr" / f"{name}_0000.nii.gz"
    write_image(image, path)
    return path, image, phase


def benchmark(repeats: int = 5) -> None:
    """Median seconds of ``synthesize`` (bundled map and at 1.5 mm) and of a written case."""
    labels = sitk.ReadImage(str(BUNDLED / "example_seg.nii.gz"))
    fine = _resampled(labels, (1.5, 1.5, 1.5), sitk.sitkNearestNeighbor, 0.0)
    for name, img in (("3 mm", labels), ("1.5 mm", fine)):
        array = sitk.GetArrayFromImage(img)
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            synthesize(array, img.GetSpacing()[::-1], np.random.default_rng(k))
            times.append(time.perf_counter() - t)
        print(f"synthesize, {name} map {array.shape}: {np.median(times):.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("imagesTr", "labelsTr"):
            (Path(tmp) / sub).mkdir()
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            write_case(labels, np.random.default_rng(k), Path(tmp), "case")
            times.append(time.perf_counter() - t)
        print(f"one written case (synthesis, resampling, two files): {np.median(times):.2f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.synth",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--labels", type=Path, help="TotalSegmentator v2 total-task label map")
    p.add_argument("--out", type=Path, help="nnU-Net dataset folder to add the cases to")
    p.add_argument("--count", type=int, default=1, help="cases to write (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="synth", help="case names: PREFIX_NNN")
    p.add_argument("--keep-grid", action="store_true", help="keep the label map's grid")
    p.add_argument("--benchmark", action="store_true", help="time synthesis and exit")
    args = p.parse_args(argv)
    if args.benchmark:
        benchmark()
        return 0
    if args.labels is None or args.out is None or args.count < 0 or args.seed < 0:
        p.error("--labels and --out are required; --count and --seed are not negative")
    try:
        image = read_ct(args.labels)
        labels = sitk.GetImageFromArray(check_label_map(image, args.labels))
        labels.CopyInformation(image)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for sub in ("imagesTr", "labelsTr"):
            (args.out / sub).mkdir(parents=True, exist_ok=True)
        for i in range(args.count):
            name = f"{args.prefix}_{i:03d}"
            # Its own stream per case: case i is the same whatever --count.
            rng = np.random.default_rng([args.seed, i])
            path, image, phase = write_case(labels, rng, args.out, name, args.keep_grid)
            sp = "x".join(f"{s:.2f}" for s in image.GetSpacing())
            size = "x".join(map(str, image.GetSize()))
            print(f"{path}  {phase}  {size} voxels  {sp} mm")
        ensure_dataset_json(args.out, args.labels)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
