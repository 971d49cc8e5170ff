"""How far one label map is from another: the criterion a faster or lower-precision path meets.

A path "keeps the labels" when at least 99.5 % of the voxels agree with the reference path's
and every organ above 10 mL in either map has DSC >= 0.99 against it.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.organs import LABEL_NAMES
from inference.report import dice

MIN_VOXEL_AGREEMENT = 0.995
MIN_ORGAN_DSC = 0.99
ORGAN_MIN_ML = 10.0  # smaller organs are a few voxels across: one voxel moves their DSC a lot


@dataclass(frozen=True)
class Agreement:
    voxels: float  # share of voxels with the same label
    min_dsc: float  # the least DSC over the organs above ORGAN_MIN_ML (1.0 when none)
    worst: str  # that organ's name ("" when none)

    @property
    def kept(self) -> bool:
        return self.voxels >= MIN_VOXEL_AGREEMENT and self.min_dsc >= MIN_ORGAN_DSC

    def as_dict(self) -> dict:
        return {**asdict(self), "kept": bool(self.kept)}


def agreement(labels: np.ndarray, reference: np.ndarray, voxel_ml: float) -> Agreement:
    """``labels`` against ``reference`` (same shape), with each voxel's volume in mL."""
    if labels.shape != reference.shape:
        raise ValueError(f"shapes differ: {labels.shape} against {reference.shape}")
    voxels = float(np.mean(labels == reference))
    min_dsc, worst = 1.0, ""
    for k in np.union1d(np.unique(labels), np.unique(reference)):
        if k == 0:
            continue
        a, b = labels == k, reference == k
        if max(a.sum(), b.sum()) * voxel_ml < ORGAN_MIN_ML:
            continue
        d = dice(a, b)
        if d < min_dsc:
            min_dsc, worst = float(d), LABEL_NAMES.get(int(k), str(k))
    return Agreement(voxels, min_dsc, worst)


def file_agreement(labels: Path, reference: Path) -> Agreement:
    """``agreement`` of two label files on the same grid (the reference's spacing)."""
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(reference))
    ml = float(np.prod(ref.GetSpacing())) / 1000.0
    return agreement(
        sitk.GetArrayFromImage(sitk.ReadImage(str(labels))), sitk.GetArrayFromImage(ref), ml
    )
