"""Random patches for ``--patch-size``: inside the volume, on organs, labels on their image."""

import numpy as np
import pytest

from training.patches import organ_centre, patch_box, sample_patch


def test_a_patch_stays_inside_the_volume_and_around_its_centre():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = patch_box((40, 30, 20), 16, (0.75, 1.33), (39, 0, 10), rng)
        for s, n in zip(box, (40, 30, 20), strict=True):
            assert 0 <= s.start < s.stop <= n and 12 <= s.stop - s.start <= 21
        assert box[0].stop == 40 and box[1].start == 0  # clamped against the edges
        assert box[2].start <= 10 < box[2].stop
    # A side longer than the volume's is cut to the volume.
    assert patch_box((8, 40, 40), 16, (1.0, 1.0), None, rng)[0] == slice(0, 8)


def test_organ_centres_fall_on_organs_drawn_uniformly_not_by_size():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[:10] = 1  # a large organ
    labels[15, 15, 15] = 7  # a one-voxel organ
    rng = np.random.default_rng(0)
    centres = [organ_centre(labels, rng) for _ in range(400)]
    organs = [int(labels[c]) for c in centres]
    assert set(organs) == {1, 7}
    assert 0.4 < organs.count(7) / len(organs) < 0.6
    assert organ_centre(np.zeros((4, 4, 4), np.uint8), rng) is None


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 0.5), (2.0, 2.0)])
def test_patch_labels_stay_on_their_image_at_any_scale(scale):
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[20:40, 24:36, 10:50] = 3
    labels[44:50, 44:50, 44:50] = 5
    image = labels.astype(np.int16) * 100 - 50  # each organ's own HU
    rng = np.random.default_rng(1)
    for _ in range(5):
        hu, lab = sample_patch(image, labels, 24, scale, 1.0, rng)
        assert hu.shape == lab.shape == (24, 24, 24)
        assert lab.dtype.is_floating_point is False
        assert lab.any()  # organ_prob 1: centred on an organ
        inside = hu[lab == 3]
        if len(inside):
            # Trilinear resizing blurs the border: the organ's own HU inside, in the bulk.
            assert (inside - 250).abs().median() < 1
        assert (hu[lab == 0] < 250).float().mean() > 0.9
    hu, lab = sample_patch(image, None, 24, scale, 1.0, rng)
    assert lab is None and hu.shape == (24, 24, 24)


def test_slab_patches_cut_few_slices_and_stretch_them():
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[:, 20:40, 20:40] = 1
    image = np.broadcast_to(np.arange(64, dtype=np.int16)[:, None, None], labels.shape)
    rng = np.random.default_rng(2)
    box = patch_box((64, 64, 64), 32, (1.0, 1.0), None, rng, z_scale=(0.25, 0.25))
    assert [s.stop - s.start for s in box] == [8, 32, 32]
    hu, lab = sample_patch(image, labels, 32, (1.0, 1.0), 0.0, rng, 1.0, (0.25, 0.25))
    assert hu.shape == lab.shape == (32, 32, 32)
    # 8 slices (HU = slice index) spread over 32: the HU range through z is 7, not 31.
    assert float(hu[:, 16, 16].max() - hu[:, 16, 16].min()) <= 7.5
    # slab_prob 0 draws nothing more: the same patches as before the option existed.
    a = sample_patch(image, labels, 32, (0.8, 1.2), 0.5, np.random.default_rng(3))
    b = sample_patch(image, labels, 32, (0.8, 1.2), 0.5, np.random.default_rng(3), 0.0)
    assert all(bool((x == y).all()) for x, y in zip(a, b, strict=True))
