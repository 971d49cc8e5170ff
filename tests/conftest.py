"""Shared fixtures."""

import numpy as np
import pytest
import SimpleITK as sitk

from inference.hu import as_int16_hu
from tests.helpers import SAMPLE_CT


@pytest.fixture(scope="session")
def sample_ct() -> np.ndarray:
    """The bundled real CT (patient A, 112 x 101 x 122 at 3 mm) as z, y, x int16 HU."""
    return as_int16_hu(sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT))))
