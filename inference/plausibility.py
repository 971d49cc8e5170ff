"""Does an input look like an abdominal CT? Warnings only: it is segmented all the same.

The networks give organs for anything (uint8 noise gets all 13), so a label map put among the
inputs, a scan in other units than Hounsfield's, or a sliver a few millimetres wide would
otherwise come back with confident, meaningless labels and no word.
"""

import numpy as np

from .roi import BODY_HU

# The smallest organs (adrenal glands, gallbladder) span 2-5 cm; a scan thinner than this on
# any axis holds no organ whole. Patient B's 20-slice slab is 40 mm deep.
MIN_EXTENT_MM = 20.0
# An abdomen is 25-40 cm wide: a scan narrower than this on its two larger axes is not one.
MIN_WIDTH_MM = 100.0
# A CT holds thousands of distinct values even in a small sample; a label map at most a
# hundred or so (TotalSegmentator: 118).
MIN_DISTINCT_VALUES = 128
# Air (about -1000 HU, below BODY_HU) surrounds the body and fills lungs and bowel; soft tissue
# is about -150..250 HU. A scan without either is in other units (raw detector values, MR) or
# holds no body.
AIR_HU = BODY_HU
SOFT_TISSUE_HU = (-150, 250)
MIN_FRACTION = 0.001
SAMPLE = 200_000  # voxels looked at: enough for these fractions, fast on any size


def plausibility_warnings(volume: np.ndarray, spacing_xyz: tuple[float, ...]) -> list[str]:
    """Reasons why a ``(z, y, x)`` volume with ITK spacing does not look like an abdominal CT;
    empty when it does."""
    reasons = []
    extents = sorted(n * s for n, s in zip(volume.shape[::-1], spacing_xyz, strict=True))
    if extents[0] < MIN_EXTENT_MM:
        reasons.append(f"only {extents[0]:.1f} mm thick (organs need {MIN_EXTENT_MM:g} mm)")
    if extents[1] < MIN_WIDTH_MM:
        reasons.append(f"only {extents[1]:.0f} mm wide (an abdomen is {MIN_WIDTH_MM:g}+ mm)")
    flat = volume.reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE)]
    distinct = np.unique(sample).size
    if distinct < MIN_DISTINCT_VALUES:
        reasons.append(f"only {distinct} distinct values (a label map or mask?)")
    if np.mean(sample < AIR_HU) < MIN_FRACTION:
        reasons.append(f"no air (< {AIR_HU} HU): not in Hounsfield units?")
    low, high = SOFT_TISSUE_HU
    if np.mean((sample >= low) & (sample <= high)) < MIN_FRACTION:
        reasons.append(f"no soft tissue ({low}..{high} HU)")
    return reasons
