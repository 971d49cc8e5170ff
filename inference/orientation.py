"""Canonical orientation by axis permutation and flips only (never interpolation).

The canonical orientation is the one whose direction matrix is nearest the identity: array
axes ``(z, y, x)`` run towards the patient's superior, posterior and left (ITK's LPS world;
most CTs are stored this way and need no change). Any other scan, including permuted axes and
oblique directions, is brought to it by the permutation and flips that best match its
direction cosines, and brought back exactly by ``Orientation.undo``.
"""

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """How a ``(z, y, x)`` array was permuted and flipped to reach the canonical orientation.

    ``axes[c]`` is the source array axis that becomes canonical axis ``c``; ``flips[c]`` says
    whether canonical axis ``c`` was reversed afterwards.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def from_direction(cls, direction: tuple[float, ...]) -> "Orientation":
        """From a SimpleITK direction (row-major 3x3; column i = world direction of index i)."""
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        # The permutation of index axes onto world axes with the largest total alignment.
        best = max(
            itertools.permutations(range(3)),
            key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)),
        )
        # Index axis i is array axis 2 - i; canonical array axis c holds world axis 2 - c.
        axes = tuple(2 - best[2 - c] for c in range(3))
        flips = tuple(bool(d[2 - c, best[2 - c]] < 0) for c in range(3))
        return cls(axes, flips)  # type: ignore[arg-type]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source ``(z, y, x)`` array -> canonical (a view where possible)."""
        out = np.transpose(array, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Canonical array -> the source's axis order and directions (a view)."""
        out = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(out, np.argsort(self.axes))

    def spacing(self, spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel size along the canonical ``(z, y, x)`` axes, from SimpleITK's (x, y, z)."""
        zyx = spacing_xyz[::-1]
        return tuple(float(zyx[a]) for a in self.axes)  # type: ignore[return-value]
