"""CT intensities as the stage graphs take them: int16 Hounsfield units."""

import numpy as np

INT16 = np.iinfo(np.int16)
# The paper's intensity window: training's default, exported into each graph (the runtime
# reads a graph's own window from its metadata, never this).
HU_WINDOW = (-325.0, 325.0)


def as_int16_hu(volume: np.ndarray) -> np.ndarray:
    """Any numeric HU array -> int16, rounded and clipped (CT values fit int16 losslessly)."""
    if volume.dtype == np.int16:
        return volume
    if np.issubdtype(volume.dtype, np.floating):
        volume = np.rint(volume)
    return np.clip(volume, INT16.min, INT16.max).astype(np.int16)
