"""Synthetic CTs painted from TotalSegmentator label maps (``training.synth``)."""

import ast
import json
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from inference.io import read_ct
from tests.helpers import ROOT
from training.dataset import labelled_cases, read_labels
from training.synth import (
    MAX_INPLANE,
    MAX_SLICES,
    PHASES,
    TISSUES,
    TS_TISSUE,
    main,
    random_spacing,
    resample_random,
    resampled_size,
    synth_case,
    synthesize,
)
from training.totalsegmentator import to_flare

LABEL_MAP = ROOT / "data" / "totalsegmentator" / "example_seg.nii.gz"
SDIST = ROOT / "build" / "downloads" / "totalsegmentator-2.18.0.tar.gz"
# The bundled map's ids painted as generic soft tissue on purpose: prostate (30-60 HU, little
# enhancement). Every other structure present has its own group.
GENERIC_IN_BUNDLED_MAP = {22}


@pytest.fixture(scope="module")
def label_map() -> sitk.Image:
    """The bundled map (patient A, 122 x 101 x 112 at 3 mm, direction diag(-1, -1, 1))."""
    return sitk.ReadImage(str(LABEL_MAP))


@pytest.fixture(scope="module")
def slab(label_map) -> sitk.Image:
    """30 slices through liver, kidneys, spleen and aorta, keeping their physical place."""
    return label_map[:, :, 55:85]


@pytest.fixture(scope="module")
def phases(label_map) -> dict[str, np.ndarray]:
    """The bundled map painted in each phase from one generator state: one patient."""
    labels = sitk.GetArrayFromImage(label_map)
    return {p: synthesize(labels, (3.0, 3.0, 3.0), np.random.default_rng(7), p) for p in PHASES}


def test_the_same_seed_gives_the_same_volume_another_seed_another(slab):
    labels = sitk.GetArrayFromImage(slab)
    a, b, c = (synthesize(labels, (3.0, 3.0, 3.0), np.random.default_rng(s)) for s in (1, 1, 2))
    assert a.dtype == np.int16 and a.shape == labels.shape
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_contrast_raises_the_enhancing_organs_and_leaves_bone(phases, label_map):
    labels = sitk.GetArrayFromImage(label_map)

    def mean(ts_ids, phase):  # the interior, away from partial volume with the neighbours
        inside = ndi.binary_erosion(np.isin(labels, ts_ids))
        return phases[phase][inside].mean()

    for ts_ids in ([5], [2, 3], [52]):  # liver, kidneys, aorta
        assert mean(ts_ids, "arterial") > mean(ts_ids, "native") + 5, ts_ids
        assert mean(ts_ids, "venous") > mean(ts_ids, "native") + 5, ts_ids
    assert mean([52], "arterial") > 200 and mean([52], "native") < 60
    vertebrae = list(range(26, 34))
    for phase in PHASES:
        assert mean(vertebrae, phase) > 150, phase
    assert abs(mean(vertebrae, "arterial") - mean(vertebrae, "native")) < 10


def test_air_outside_the_body_and_fat_within(phases, label_map):
    labels = sitk.GetArrayFromImage(label_map)
    for hu in phases.values():
        corners = hu[:, :8, :8], hu[:, :8, -8:], hu[:, -8:, :8], hu[:, -8:, -8:]
        assert all(-1024 <= c.mean() < -970 for c in corners)
        body = hu > -500
        assert 0.45 < body.mean() < 0.85  # patient A's own CT: 0.64
        unlabelled = hu[body & (labels == 0)]
        # Fat among the organs and under the skin, with soft tissue in it (patient A: 25% of
        # these voxels under -107 HU, half under -84).
        assert -150 < np.percentile(unlabelled, 25) < -70
        assert -130 < np.median(unlabelled) < 0


def test_every_totalsegmentator_class_has_a_tissue_group(label_map):
    assert sorted(TS_TISSUE) == list(range(1, 118))
    assert set(TS_TISSUE.values()) <= set(TISSUES)
    for name, tissue in TISSUES.items():
        for phase in PHASES:
            low, high, spread = tissue.hu[phase]
            assert -1024 <= low <= high <= 3071 and spread >= 0, (name, phase)
    present = set(np.unique(sitk.GetArrayFromImage(label_map)).tolist()) - {0}
    assert len(present) == 61
    generic = {i for i in present if TS_TISSUE[i] == "soft_tissue"}
    assert generic == GENERIC_IN_BUNDLED_MAP


@pytest.mark.skipif(not SDIST.is_file(), reason="TotalSegmentator sdist not downloaded")
def test_the_tissue_table_agrees_with_totalsegmentators_class_names():
    with tarfile.open(SDIST) as tar:
        source = tar.extractfile("totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py")
        tree = ast.parse(source.read())
    assign = next(
        n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "class_map"
    )
    names = ast.literal_eval(assign.value)["total"]
    assert sorted(names) == sorted(TS_TISSUE)
    expect = {
        "lung": "lung",
        "vertebrae": "bone",
        "rib": "bone",
        "femur": "bone",
        "hip": "bone",
        "artery": "artery",
        "vena": "vein",
        "gluteus": "muscle",
        "iliopsoas": "muscle",
        "kidney_cyst": "fluid",
    }
    for ts_id, name in names.items():
        for word, group in expect.items():
            if name.startswith(word) or f"_{word}" in name:
                assert TS_TISSUE[ts_id] == group, (ts_id, name)
    assert {names[i] for i in GENERIC_IN_BUNDLED_MAP} == {"prostate"}


def centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    zyx = np.argwhere(sitk.GetArrayViewFromImage(labels) == value).mean(axis=0)
    return np.array(labels.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resample_random_keeps_the_extent_and_the_labels_in_place(slab, seed):
    labels = to_flare(slab)
    image = sitk.Cast(labels, sitk.sitkInt16) * 50 - 1000  # any image on the same grid
    new_image, new_labels = resample_random(image, labels, np.random.default_rng(seed))
    assert new_image.GetPixelID() == sitk.sitkInt16 and new_labels.GetPixelID() == sitk.sitkUInt8
    for out in (new_image, new_labels):
        assert out.GetOrigin() == labels.GetOrigin()
        assert out.GetDirection() == labels.GetDirection()
        assert out.GetSize() == new_labels.GetSize() and out.GetSpacing() == new_labels.GetSpacing()
    for n, s, m, t in zip(
        labels.GetSize(),
        labels.GetSpacing(),
        new_labels.GetSize(),
        new_labels.GetSpacing(),
        strict=True,
    ):
        assert abs(m * t - n * s) <= max(s, t)
    voxel = max(max(labels.GetSpacing()), max(new_labels.GetSpacing()))
    for organ in (1, 2, 3, 5):  # liver, right kidney, spleen, aorta
        moved = np.linalg.norm(centroid_mm(new_labels, organ) - centroid_mm(labels, organ))
        assert moved < voxel, organ
    assert set(np.unique(sitk.GetArrayViewFromImage(new_labels))) <= set(range(14))


def test_random_spacing_stays_within_the_caps():
    size, spacing = (512, 512, 400), (0.7, 0.7, 1.0)  # a full-resolution label map
    for seed in range(20):
        new = random_spacing(size, spacing, np.random.default_rng(seed))
        n = resampled_size(size, spacing, new)
        assert n[0] <= MAX_INPLANE and n[1] <= MAX_INPLANE and n[2] <= MAX_SLICES
        assert 0.6 <= new[0] == new[1] and 1.0 <= new[2] <= max(5.0, 399 / (MAX_SLICES - 1))


@pytest.mark.parametrize(
    "fill",
    [lambda a: a, lambda a: a + 5, lambda a: a.__setitem__((2, 2, 2), 52) or a],
    ids=["empty", "one-structure", "one-voxel"],
)
def test_tiny_label_maps_synthesize(fill):
    labels = fill(np.zeros((5, 6, 7), np.uint8))
    hu = synthesize(labels, (2.5, 0.8, 0.8), np.random.default_rng(0), "venous")
    assert hu.shape == labels.shape and hu.dtype == np.int16
    if not labels.any():
        assert hu.max() < -900  # no body: air


def test_synthesize_refuses_what_is_not_a_label_map():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="float"):
        synthesize(np.zeros((4, 4, 4), np.float32), (1, 1, 1), rng)
    with pytest.raises(ValueError, match="delayed"):
        synthesize(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), rng, "delayed")


def test_cli_keep_grid_writes_the_label_map_in_flare_ids(tmp_path, slab, capsys):
    source = tmp_path / "slab.nii.gz"
    sitk.WriteImage(slab, str(source))
    out = tmp_path / "dataset"
    assert main(["--labels", str(source), "--out", str(out), "--seed", "3", "--keep-grid"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    image = sitk.ReadImage(str(out / "imagesTr" / "synth_000_0000.nii.gz"))
    labels = sitk.ReadImage(str(out / "labelsTr" / "synth_000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    for out_image in (image, labels):
        assert out_image.GetSize() == slab.GetSize()
        assert np.allclose(out_image.GetOrigin(), slab.GetOrigin(), atol=1e-4)
        assert np.allclose(out_image.GetDirection(), slab.GetDirection())
        assert np.allclose(out_image.GetSpacing(), slab.GetSpacing())
    expected = sitk.GetArrayFromImage(to_flare(slab))
    assert np.array_equal(sitk.GetArrayFromImage(labels), expected)


def test_cli_writes_cases_training_reads(tmp_path, slab, capsys):
    source = tmp_path / "slab.nii.gz"
    sitk.WriteImage(slab, str(source))
    out = tmp_path / "dataset"
    args = ["--labels", str(source), "--out", str(out), "--seed", "5", "--prefix", "s"]
    assert main([*args, "--count", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "s_001_0000.nii.gz" in printed[1]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"]["liver"] == 1
    cases = labelled_cases(out)
    assert [c.name for c in cases] == ["s_000", "s_001"]
    for case in cases:
        image = read_ct(case.image)
        flare = read_labels(case.labels, image, case.image)
        assert {1, 2, 3, 5, 13} <= set(np.unique(flare).tolist())

    # A case depends on the seed and its number only; an existing dataset.json keeps its
    # keys and gets the new count, so training.prepare does not warn about the added cases.
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[0].image)))
    (out / "dataset.json").write_text("{}")
    again = tmp_path / "again"
    again.mkdir()
    (again / "dataset.json").write_text('{"name": "mine"}')
    assert main([*args[:3], str(again), *args[4:], "--count", "1"]) == 0
    redo = sitk.ReadImage(str(again / "imagesTr" / "s_000_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(redo), first)
    assert json.loads((again / "dataset.json").read_text()) == {"name": "mine", "numTraining": 1}
    assert sorted(p.name for p in again.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]


def _write(array: np.ndarray, path) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.ones((8, 8), np.uint8) * 5, "2D"),
        (np.full((4, 4, 4), 5.5, np.float32), "not integers"),
        (np.full((4, 4, 4), 25, np.uint8), "none of the FLARE organs"),
        (np.full((4, 4, 4), 300, np.int16), "not in 0..255"),
    ],
    ids=["2d", "fractional", "no-organs", "out-of-range"],
)
def test_cli_bad_label_map_is_one_line_and_exit_2(tmp_path, capsys, array, reason):
    path = _write(array, tmp_path / "bad.nii.gz")
    assert main(["--labels", path, "--out", str(tmp_path / "dataset")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err and reason in err
    assert not (tmp_path / "dataset").exists()


def test_cli_a_float_map_of_whole_numbers_is_fine(tmp_path):
    array = np.zeros((6, 6, 6), np.float32)
    array[2:4, 2:4, 2:4] = 5  # liver
    path = _write(array, tmp_path / "float.nii.gz")
    assert main(["--labels", path, "--out", str(tmp_path / "d"), "--keep-grid"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "d/labelsTr/synth_000.nii.gz")))
    assert np.array_equal(labels, np.where(array == 5, 1, 0))


def test_a_map_finer_than_the_caps_is_painted_on_a_coarser_grid():
    array = np.zeros((3, 4, 2 * MAX_INPLANE), np.uint8)  # z, y, x: too many voxels across
    array[1:, 1:3, 100:300] = 5  # liver
    labels = sitk.GetImageFromArray(array)
    labels.SetSpacing((0.5, 0.5, 2.0))
    image, flare, phase = synth_case(labels, np.random.default_rng(0))
    assert phase in PHASES and image.GetSize() == flare.GetSize()
    assert image.GetSize()[0] <= MAX_INPLANE and image.GetSize()[1] <= MAX_INPLANE
    extent = (2 * MAX_INPLANE - 1) * 0.5
    assert abs((image.GetSize()[0] - 1) * image.GetSpacing()[0] - extent) <= 2 * 1.5
