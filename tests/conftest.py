"""Shared fixtures."""

import numpy as np
import pytest
import SimpleITK as sitk

from export.__main__ import main as export_main
from inference.hu import as_int16_hu
from tests.helpers import SAMPLE_CT, SMALL_RANDOM_GRAPHS


@pytest.fixture(scope="session")
def sample_ct() -> np.ndarray:
    """The bundled real CT (patient A, 112 x 101 x 122 at 3 mm) as z, y, x int16 HU."""
    return as_int16_hu(sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT))))


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory):
    """fp32 stage graphs of small random networks (seeded), for pipeline tests."""
    out = tmp_path_factory.mktemp("small_weights")
    args = [*SMALL_RANDOM_GRAPHS, "--seed", "1", "--out", str(out)]
    assert export_main(args) == 0
    return out
