"""CT intensities as the stage graphs take them: int16 Hounsfield units."""

import numpy as np

INT16 = np.iinfo(np.int16)
# The paper's intensity window: training's default, exported into each graph (the runtime
# reads a graph's own window from its metadata, never this).
HU_WINDOW = (-325.0, 325.0)


# Voxels converted at a time: the float temporaries of rounding and clipping stay this small
# instead of the volume's size (a float64 input would otherwise cost 26 bytes a voxel).
SLAB_VOXELS = 1 << 22


def as_int16_hu(volume: np.ndarray) -> np.ndarray:
    """Any numeric HU array -> int16, rounded and clipped (CT values fit int16 losslessly)."""
    if volume.dtype == np.int16:
        return volume
    out = np.empty(volume.shape, np.int16)
    flat_in, flat_out = volume.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, SLAB_VOXELS):
        part = flat_in[start : start + SLAB_VOXELS]
        if np.issubdtype(part.dtype, np.floating):
            part = np.rint(part)
        flat_out[start : start + SLAB_VOXELS] = np.clip(part, INT16.min, INT16.max)
    return out
