"""benchmarks/agreement.py: when a faster path keeps the labels."""

import numpy as np
import pytest

from benchmarks.agreement import agreement


def test_small_organs_do_not_count_and_large_ones_must_match():
    ref = np.zeros((10, 100, 100), np.uint8)
    ref[:, :50, :50] = 1  # liver: 25000 voxels, 25 mL at 1 uL a voxel
    ref[0, 0, 60:65] = 7  # adrenal: 5 voxels, below 10 mL
    same = agreement(ref.copy(), ref, voxel_ml=0.001)
    assert same.voxels == 1.0 and same.min_dsc == 1.0 and same.kept
    moved = ref.copy()
    moved[0, 0, 60:65] = 0  # the small organ lost: still kept
    assert agreement(moved, ref, 0.001).kept
    moved[:, :5, :50] = 0  # 10 % of the liver lost: 2500 voxels, 2.5 % of the volume
    a = agreement(moved, ref, 0.001)
    assert a.worst == "liver" and a.min_dsc == pytest.approx(2 * 22500 / 47500)
    assert a.voxels == pytest.approx(1 - 2505 / 100000) and not a.kept
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(ref[1:], ref, 0.001)
