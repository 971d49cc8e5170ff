"""The 13 FLARE22 organs: label ids, names and NSD tolerances (the label map of the task)."""

from dataclasses import dataclass


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
