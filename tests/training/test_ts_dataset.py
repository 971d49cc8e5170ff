"""The six TotalSegmentator-dataset bodies (data/ts_dataset): intact, loadable, paintable."""

import hashlib
import re

import numpy as np
import SimpleITK as sitk

from inference.organs import from_totalsegmentator
from tests.helpers import ROOT
from training.synth import check_label_map
from training.totalsegmentator import TS_DATASET, add_test_subject

FLARE_MAIN = {1: "liver", 2: "right kidney", 3: "spleen", 13: "left kidney"}


def test_the_files_are_those_the_notice_names():
    notice = (TS_DATASET / "NOTICE.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in notice and "doi:10.1148/ryai.230024" in notice
    hashes = re.findall(r"^([0-9a-f]{64})  (\S+)$", notice, re.M)
    assert len(hashes) == 7
    for digest, name in hashes:
        assert hashlib.sha256((TS_DATASET / name).read_bytes()).hexdigest() == digest, name


def test_every_map_loads_as_a_label_map_with_the_main_organs():
    for path in sorted((TS_DATASET / "labels").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        flare = from_totalsegmentator(check_label_map(image, path))
        present = set(np.unique(flare).tolist())
        assert set(FLARE_MAIN) <= present, (path.name, present)


def test_the_held_out_body_has_its_ct_on_its_map_grid(tmp_path):
    add_test_subject(tmp_path, "s0009")
    ct = sitk.ReadImage(str(tmp_path / "imagesTs" / "s0009_0000.nii.gz"))
    labels = sitk.ReadImage(str(tmp_path / "labelsTs" / "s0009.nii.gz"))
    assert ct.GetSize() == labels.GetSize()
    assert np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=1e-3)
    assert np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-3)
    array = sitk.GetArrayFromImage(labels)
    assert array.max() <= 13 and (array == 1).sum() > 50_000  # liver in FLARE ids
    assert (ROOT / "data" / "ts_dataset" / "NOTICE.md").is_file()


def test_the_held_out_body_fold_config_trains_from_the_shipped_fine_network():
    import argparse

    from training.config import from_args

    cfg = from_args(
        argparse.Namespace(config=ROOT / "training" / "configs" / "bodies_fine_s0009_out.toml")
    )
    assert cfg.stage == "fine" and (ROOT / cfg.init).is_file()
    makefile = (ROOT / "Makefile").read_text()
    assert "BODIES := build/bodies_s0009" in makefile and cfg.cache == "build/bodies_s0009_cache"
    assert "--test-subject s0009" in makefile  # its CT and map in no training sample
    assert "s0009" not in makefile.split("PAINTED_MAPS :=")[1].splitlines()[0]
