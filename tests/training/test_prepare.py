"""``python -m training.prepare`` on a tiny synthetic nnU-Net dataset, and reading its cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from inference.orientation import Orientation
from tests.helpers import reoriented
from training.data import CacheError, CacheSet, check_cache, load_index, oversampling, split
from training.dataset import FLARE_LABELS
from training.prepare import main
from training.transforms import resize_labels

SHAPE = (40, 48, 44)  # z, y, x
SPACING_XYZ = (0.9, 0.9, 2.5)
# One worker: a process pool costs seconds to start; the tests that need it ask for two.
SMALL = ["--coarse-size", "32", "--fine-size", "48", "--fine-crops", "2", "--workers", "1"]
# Case b holds case a's anatomy stored with permuted, flipped axes.
PERMUTED = Orientation(axes=(2, 0, 1), flips=(True, False, True))


def ellipsoid(centre: tuple, radii: tuple) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c, r = centre, radii
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1


def anatomy(shift: int, organs: dict[int, tuple]) -> tuple[np.ndarray, np.ndarray]:
    """HU (air, a body, organs of distinct HU) and labels, in canonical (z, y, x)."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[ellipsoid((20, 24, 22), (19, 20, 19))] = 0
    labels = np.zeros(SHAPE, np.uint8)
    for label, (centre, radii) in organs.items():
        mask = ellipsoid(tuple(c + shift for c in centre), radii)
        hu[mask] = 30 + 10 * label
        labels[mask] = label
    return hu, labels


def to_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-20.0, 10.0, 300.0))
    return image


def write_case(dataset: Path, name: str, image: sitk.Image, labels: sitk.Image) -> None:
    sitk.WriteImage(image, str(dataset / "imagesTr" / f"{name}_0000.nii.gz"))
    sitk.WriteImage(labels, str(dataset / "labelsTr" / f"{name}.nii.gz"))


def make_dataset(root: Path) -> Path:
    dataset = root / "Dataset001_Tiny"
    for sub in ("imagesTr", "labelsTr", "imagesUnlabelled"):
        (dataset / sub).mkdir(parents=True)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": FLARE_LABELS,
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (dataset / "dataset.json").write_text(json.dumps(meta))
    organs = {
        1: ((18, 20, 14), (8, 10, 9)),
        3: ((20, 22, 31), (5, 6, 5)),
        5: ((20, 30, 22), (12, 2, 2)),
    }
    hu, labels = anatomy(0, organs)
    write_case(dataset, "case_a", to_image(hu), to_image(labels))
    write_case(
        dataset,
        "case_b",
        reoriented(to_image(hu), PERMUTED),
        reoriented(to_image(labels), PERMUTED),
    )
    hu, labels = anatomy(3, {2: ((15, 22, 12), (4, 5, 4)), 13: ((15, 22, 30), (4, 5, 4))})
    write_case(dataset, "case_c", to_image(hu), to_image(labels))
    sitk.WriteImage(
        to_image(anatomy(-2, organs)[0]), str(dataset / "imagesUnlabelled" / "u1.nii.gz")
    )
    return dataset


def run(dataset: Path, out: Path, *extra: str) -> int:
    return main(["--dataset", str(dataset), "--out", str(out), *SMALL, *extra])


def load(out: Path, stem: str) -> np.ndarray:
    return np.load(out / f"{stem}.npy")


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_ino, p.read_bytes()) for p in out.rglob("*.npy")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    assert run(dataset, out) == 0
    return out


@pytest.fixture
def own_dataset(dataset, tmp_path) -> Path:
    """A copy this test may change."""
    return Path(shutil.copytree(dataset, tmp_path / "raw"))


def test_resize_labels_keeps_labels_at_the_same_size():
    labels = np.random.default_rng(0).integers(0, 14, (7, 9, 11), dtype=np.uint8)
    assert np.array_equal(resize_labels(labels, (7, 9, 11)), labels)
    as_tensor = resize_labels(torch.from_numpy(labels), (7, 9, 11))
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, torch.from_numpy(labels))


def test_resize_labels_halves_a_cube_and_keeps_a_thin_plate():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 5
    labels[7, :, :] = 9  # one voxel thick: half of each output voxel of the last slice
    out = resize_labels(labels, 4)
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[1:3, 1:3, 1:3] = 5
    expected[3] = 9
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_files_shapes_and_index(cache, dataset):
    index = load_index(cache)
    assert index["stages"] == {
        "coarse": {
            "size": 32,
            "crops": 1,
            "min_fov_mm": 40.0,
            "fov_side_fraction": 0.15,
            "seed": 0,
        },
        "fine": {"size": 48, "margin_mm": 20.0, "jitter_mm": 15.0, "crops": 2, "seed": 0},
    }
    assert sorted(index["cases"]) == ["case_a", "case_b", "case_c", "u1"]
    for name in ("case_a", "case_b", "case_c"):
        record = index["cases"][name]
        assert record["kind"] == "labelled" and len(record["labels_sha256"]) == 64
        assert record["image"] == f"imagesTr/{name}_0000.nii.gz"
        assert record["spacing"] == pytest.approx([2.5, 0.9, 0.9])
        assert len(record["fine_boxes"]) == 2
        for stem, size in [(f"coarse/labelled/{name}", 32), (f"fine/labelled/{name}_1", 48)]:
            image, labels = load(cache, f"{stem}.image"), load(cache, f"{stem}.labels")
            assert image.shape == labels.shape == (size,) * 3
            assert image.dtype == np.int16 and labels.dtype == np.uint8
            assert len(np.unique(labels)) == (3 if name == "case_c" else 4)
    assert index["cases"]["u1"]["kind"] == "unlabelled" and "labels" not in index["cases"]["u1"]
    assert load(cache, "coarse/unlabelled/u1.image").shape == (32,) * 3
    assert load(cache, "fine/unlabelled/u1_1.image").shape == (48,) * 3
    assert not list(cache.glob("*/unlabelled/*.labels.npy"))
    assert not [p for p in cache.rglob("*") if ".partial-" in p.name]


def test_canonical_orientation_like_inference(cache, dataset):
    image = sitk.ReadImage(str(dataset / "imagesTr" / "case_b_0000.nii.gz"))
    assert Orientation.from_direction(image.GetDirection()) == PERMUTED
    index = load_index(cache)["cases"]
    assert index["case_b"]["source_shape"] != index["case_a"]["source_shape"]
    assert index["case_b"]["shape"] == index["case_a"]["shape"] == list(SHAPE)
    assert index["case_b"]["fine_boxes"][0] == index["case_a"]["fine_boxes"][0]
    for stem in [
        "coarse/labelled/{}.image",
        "coarse/labelled/{}.labels",
        "fine/labelled/{}_0.image",
        "fine/labelled/{}_0.labels",
    ]:
        assert np.array_equal(
            load(cache, stem.format("case_a")), load(cache, stem.format("case_b"))
        )


def test_fine_crops_hold_the_organs(cache, dataset):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "case_c.nii.gz")))
    nz = np.nonzero(labels)
    boxes = load_index(cache)["cases"]["case_c"]["fine_boxes"]
    for axis, (start, stop) in enumerate(boxes[0]):  # crop 0: the organs' box plus margins
        assert start <= nz[axis].min() and nz[axis].max() < stop
    assert boxes[1] != boxes[0]  # jittered
    for box in boxes:
        assert all(0 <= a < b <= n for (a, b), n in zip(box, SHAPE, strict=True))


def test_runs_are_deterministic_with_any_number_of_workers(cache, dataset, tmp_path):
    assert run(dataset, tmp_path, "--workers", "2") == 0  # argparse: the last --workers wins
    first, second = snapshot(cache), snapshot(tmp_path)
    assert first.keys() == second.keys()
    assert all(first[k][1] == second[k][1] for k in first)
    assert (cache / "index.json").read_text() == (tmp_path / "index.json").read_text()


def test_rerun_rebuilds_only_what_changed(own_dataset, tmp_path, capsys):
    out = tmp_path / "cache"
    assert run(own_dataset, out) == 0
    before, sha = snapshot(out), load_index(out)["cases"]["case_c"]["image_sha256"]
    (out / "fine" / "labelled" / ".stale.npy.partial-1").write_bytes(b"x")
    path = own_dataset / "imagesTr" / "case_c_0000.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(path)) + 5, str(path))
    capsys.readouterr()
    assert run(own_dataset, out) == 0
    err = capsys.readouterr().err
    assert "case_c: built coarse+fine" in err and err.count(": reused") == 3
    assert "1 cases built, 3 reused" in err
    assert load_index(out)["cases"]["case_c"]["image_sha256"] != sha
    after = snapshot(out)
    assert {k for k in after if after[k] != before[k]} == {k for k in after if "case_c" in k}
    assert not (out / "fine" / "labelled" / ".stale.npy.partial-1").exists()

    # A changed fine setting rebuilds every fine entry; the coarse ones still hold.
    assert run(own_dataset, out, "--fine-size", "40") == 0
    assert capsys.readouterr().err.count(": built fine") == 4
    assert load(out, "fine/unlabelled/u1_0.image").shape == (40,) * 3
    assert load_index(out)["stages"]["fine"]["size"] == 40

    for p in own_dataset.rglob("case_c*"):
        p.unlink()
    assert run(own_dataset, out, "--fine-size", "40") == 0
    assert "3 stale entries removed" in capsys.readouterr().err
    assert "case_c" not in load_index(out)["cases"] and not list(out.rglob("case_c*"))


def test_bad_cases_are_skipped(own_dataset, tmp_path, capsys):
    hu, labels = anatomy(0, {1: ((18, 20, 14), (8, 10, 9))})
    write_case(own_dataset, "bad_shape", to_image(hu), to_image(labels[:-1]))
    write_case(own_dataset, "bad_value", to_image(hu), to_image(labels * 20))
    shutil.copy(
        own_dataset / "imagesUnlabelled" / "u1.nii.gz",
        own_dataset / "imagesUnlabelled" / "case_a.nii.gz",
    )
    assert run(own_dataset, tmp_path, "--workers", "2") == 1  # errors raised in workers
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 3
    # The name clash is known before any case is read: its line comes first.
    assert "case_a.nii.gz: case name 'case_a' is already used" in errors[0]
    assert "bad_shape.nii.gz: size" in errors[1] and "bad_shape_0000.nii.gz" in errors[1]
    assert "bad_value.nii.gz: label values [20]" in errors[2]
    assert sorted(load_index(tmp_path)["cases"]) == ["case_a", "case_b", "case_c", "u1"]


def test_bad_dataset_folders_exit_2(tmp_path, dataset):
    assert run(tmp_path / "missing", tmp_path / "out") == 2
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "dataset.json").write_text("{}")
    assert run(empty, tmp_path / "out") == 2
    assert run(dataset, tmp_path / "out", "--unlabelled", str(tmp_path / "nowhere")) == 2


def test_cache_set_and_split_keep_a_case_together(cache):
    fine = CacheSet(cache, "fine", size=48)
    assert len(fine) == 6 and fine.names[:2] == ["case_a_0", "case_a_1"]
    image, labels = fine[0]
    assert isinstance(image, np.memmap) and image.dtype == np.int16 and labels.shape == (48,) * 3
    train, val = split(fine.cases, 0.34, seed=3)
    assert len(val) == 1 and sorted(train + val) == fine.case_names
    sides = [CacheSet(cache, "fine", cases=train), CacheSet(cache, "fine", cases=val)]
    assert len(sides[0]) == 4 and len(sides[1]) == 2 and not set(sides[0].cases) & set(val)
    assert split(fine.cases, 0.34, seed=3) == (train, val)
    assert split(fine.cases, ["case_b"]) == (["case_a", "case_c"], ["case_b"])
    with pytest.raises(ValueError, match="case_x"):
        split(fine.cases, ["case_x"])
    unlabelled = CacheSet(cache, "coarse", "unlabelled")
    assert unlabelled.names == ["u1"] and unlabelled[0][1] is None


def test_oversampled_cases_come_that_many_times_and_typos_are_refused(cache):
    fine = CacheSet(cache, "fine")
    repeat = oversampling(["case_*=2", "case_c=3"], fine.cases)
    assert repeat == {"case_a": 2, "case_b": 2, "case_c": 3}
    more = CacheSet(cache, "fine", repeat={"case_b": 3})
    assert len(more) == len(fine) + 2 * fine.cases.count("case_b")
    assert more.names.count("case_b_0") == 3 and more.cases.count("case_a") == 2
    for spec in ["case_a", "case_a=0", "=2", "case_a=x"]:
        with pytest.raises(ValueError, match="PATTERN=N"):
            oversampling([spec], fine.cases)
    with pytest.raises(ValueError, match="no training case matches 'patient\\*'"):
        oversampling(["patient*=16"], fine.cases)


def test_check_cache_names_the_mismatch(cache, tmp_path, dataset):
    check_cache(cache, "coarse", 32)
    with pytest.raises(CacheError, match=r"built for size 48.*takes 192.*training\.prepare"):
        check_cache(cache, "fine", 192)
    with pytest.raises(CacheError, match=f"{tmp_path}.*training.prepare"):
        check_cache(tmp_path, "coarse", 160)
    assert run(dataset, tmp_path / "c", "--stages", "coarse", "--no-unlabelled") == 0
    with pytest.raises(CacheError, match="no fine entries"):
        check_cache(tmp_path / "c", "fine", 48)


def test_coarse_fields_of_view_are_random_slabs_of_the_volume(dataset, tmp_path):
    out = tmp_path / "cache"
    fov = ["--coarse-crops", "3", "--min-fov-mm", "30", "--fov-side-fraction", "0.2"]
    assert run(dataset, out, *fov, "--stages", "coarse") == 0
    record = load_index(out)["cases"]["case_a"]
    assert record["entries"]["coarse"] == [
        "coarse/labelled/case_a",
        "coarse/labelled/case_a_fov1",
        "coarse/labelled/case_a_fov2",
    ]
    whole, *fovs = record["coarse_boxes"]
    assert whole == [[0, n] for n in record["shape"]]
    for box in fovs:
        depth_mm = (box[0][1] - box[0][0]) * record["spacing"][0]
        assert 30 <= depth_mm and box != whole
        for (lo, hi), n in zip(box[1:], record["shape"][1:], strict=True):
            assert 0 <= lo and hi <= n and lo <= 0.2 * n and n - hi <= 0.2 * n + 1
    assert load(out, "coarse/labelled/case_a_fov1.image").shape == (32, 32, 32)
    coarse = CacheSet(out, "coarse")
    assert len(coarse) == 9 and coarse.cases.count("case_b") == 3
    before = snapshot(out)
    assert run(dataset, out, *fov, "--stages", "coarse") == 0
    assert snapshot(out) == before  # reused, and the same crops if rebuilt


# AMOS's dataset.json: its own organ order under ids FLARE22 gives to other organs.
AMOS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gall_bladder": 4}


@pytest.mark.parametrize(
    "labels, named",
    [
        (AMOS, "'spleen' is 1, not 3"),
        ({}, "it has {}"),
        ({**FLARE_LABELS, "liver": 2}, "'liver' is 2, not 1"),
    ],
    ids=["amos", "empty", "swapped"],
)
def test_a_label_map_other_than_flare22s_is_refused(own_dataset, tmp_path, capsys, labels, named):
    meta = json.loads((own_dataset / "dataset.json").read_text())
    (own_dataset / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    assert run(own_dataset, tmp_path / "cache") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {own_dataset / 'dataset.json'}: labels must map FLARE22")
    assert named in line and '"right kidney": 2' in line
    assert not (tmp_path / "cache").exists()


def test_label_names_may_differ_in_case_and_underscores(own_dataset, tmp_path):
    names = {name.upper().replace(" ", "_"): k for name, k in FLARE_LABELS.items()}
    meta = json.loads((own_dataset / "dataset.json").read_text())
    (own_dataset / "dataset.json").write_text(json.dumps({**meta, "labels": names}))
    assert run(own_dataset, tmp_path, "--stages", "coarse", "--no-unlabelled") == 0


@pytest.mark.parametrize(
    "index",
    ["{not json", '{"format": "flare22-cache/0"}', '{"format": "flare22-cache/1", "stages": {}}'],
    ids=["json", "format", "no-cases"],
)
def test_a_malformed_cache_index_is_an_error_not_a_rebuild(dataset, tmp_path, capsys, index):
    (tmp_path / "index.json").write_text(index)
    assert run(dataset, tmp_path) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'index.json'}: ") and "delete it" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_an_unexpected_error_shows_its_traceback(dataset, tmp_path, monkeypatch):
    import training.prepare

    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(training.prepare, "prepare_case", broken)
    with pytest.raises(KeyError, match="a bug"):
        run(dataset, tmp_path)


def test_unlabelled_cases_may_have_fewer_fine_crops(dataset, tmp_path):
    assert run(dataset, tmp_path / "default") == 0
    assert run(dataset, tmp_path / "small", "--unlabelled-crops", "1") == 0
    default, small = load_index(tmp_path / "default"), load_index(tmp_path / "small")
    assert len(small["cases"]["u1"]["entries"]["fine"]) == 1
    assert small["cases"]["case_a"]["entries"] == default["cases"]["case_a"]["entries"]
    # Left at --fine-crops, the setting is not recorded: existing caches stay valid.
    assert "unlabelled_crops" not in default["stages"]["fine"]
    assert small["stages"]["fine"]["unlabelled_crops"] == 1
