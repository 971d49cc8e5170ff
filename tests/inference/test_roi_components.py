import numpy as np

from inference.components import keep_components, largest_components_box
from inference.roi import fine_region, grid_box_to_volume, grow_box


def test_keeps_largest_per_organ_and_others_above_the_volume():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[1:6, 1:6, 1:6] = 1  # liver, 125 voxels: largest
    labels[10:13, 10:13, 10:13] = 1  # liver, 27 voxels
    labels[15, 15, 15] = 1  # liver, 1 voxel
    labels[1:3, 15:17, 15:17] = 3  # spleen, its only component: always kept
    out = keep_components(labels, (2.0, 1.0, 1.0), min_mm3=50.0)  # 2 mm³ voxels
    assert (out[1:6, 1:6, 1:6] == 1).all()
    assert (out[10:13, 10:13, 10:13] == 1).all()  # 54 mm³ >= 50
    assert out[15, 15, 15] == 0  # 2 mm³
    assert (out[1:3, 15:17, 15:17] == 3).all()
    assert out.dtype == np.uint8


def test_touching_organs_stay_separate_components():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = 2
    labels[5:8, 2:5, 2:5] = 13
    out = keep_components(labels, (1.0, 1.0, 1.0), min_mm3=1e9)
    assert np.array_equal(out, labels)


def test_box_is_the_union_of_largest_components():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:4, 5:9, 10:12] = 1
    labels[20:25, 1:3, 15:18] = 2
    labels[28, 28, 28] = 1  # a smaller liver component far away: not in the box
    assert largest_components_box(labels) == (slice(2, 25), slice(1, 9), slice(10, 18))
    assert largest_components_box(np.zeros((4, 4, 4), np.uint8)) is None


def test_grid_box_maps_back_and_margin_is_in_mm():
    box = grid_box_to_volume((slice(10, 20),) * 3, (160, 160, 160), (80, 320, 480))
    assert box == (slice(5, 10), slice(20, 40), slice(30, 60))
    grown = grow_box(box, 20.0, (2.5, 0.8, 0.8), (80, 320, 480))
    assert grown == (slice(0, 18), slice(0, 65), slice(5, 85))


def test_region_falls_back_to_the_body_then_the_volume():
    volume = np.full((20, 30, 30), -1000, np.int16)
    volume[5:15, 8:20, 3:25] = 40
    empty = np.zeros((16, 16, 16), np.uint8)
    box, source = fine_region(empty, volume, (1.0, 1.0, 1.0), 20.0)
    assert source == "body" and box == (slice(5, 15), slice(8, 20), slice(3, 25))
    box, source = fine_region(empty, np.full((4, 5, 6), -1000, np.int16), (1, 1, 1), 20.0)
    assert source == "volume" and box == (slice(0, 4), slice(0, 5), slice(0, 6))
    coarse = empty.copy()
    coarse[4:8, 4:8, 4:8] = 5
    box, source = fine_region(coarse, volume, (1.0, 1.0, 1.0), 1.0)
    assert source == "organs" and box == (slice(4, 11), slice(6, 16), slice(6, 16))
