"""The 13 FLARE22 organs: label ids, names and NSD tolerances (the label map of the task)."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Organ:
    label: int
    name: str
    nsd_tolerance_mm: float


ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", 5.0),
    Organ(2, "right kidney", 3.0),
    Organ(3, "spleen", 3.0),
    Organ(4, "pancreas", 5.0),
    Organ(5, "aorta", 2.0),
    Organ(6, "inferior vena cava", 2.0),
    Organ(7, "right adrenal gland", 2.0),
    Organ(8, "left adrenal gland", 2.0),
    Organ(9, "gallbladder", 2.0),
    Organ(10, "esophagus", 3.0),
    Organ(11, "stomach", 5.0),
    Organ(12, "duodenum", 7.0),
    Organ(13, "left kidney", 3.0),
)

NUM_ORGANS = len(ORGANS)
LABEL_NAMES: dict[int, str] = {0: "background", **{o.label: o.name for o in ORGANS}}

# TotalSegmentator v2 "total" class id -> FLARE22 id, from its documented class list: the
# bundled CT's label map is in TotalSegmentator ids; every other class is background.
TOTALSEGMENTATOR_TO_FLARE: dict[int, int] = {
    5: 1, 2: 2, 1: 3, 7: 4, 52: 5, 63: 6, 8: 7, 9: 8, 4: 9, 15: 10, 6: 11, 19: 12, 3: 13,
}  # fmt: skip


def from_totalsegmentator(labels: np.ndarray) -> np.ndarray:
    """A TotalSegmentator v2 label array in FLARE22 ids (uint8, same shape)."""
    lut = np.zeros(max(256, int(labels.max()) + 1), np.uint8)
    for ts, flare in TOTALSEGMENTATOR_TO_FLARE.items():
        lut[ts] = flare
    return lut[labels]
