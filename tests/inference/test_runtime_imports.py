import subprocess
import sys

import numpy as np

from inference.hu import as_int16_hu


def test_inference_never_imports_torch():
    code = (
        "import pkgutil, importlib, sys, inference\n"
        "for m in pkgutil.walk_packages(inference.__path__, 'inference.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules, 'inference imported torch'\n"
        "assert 'onnx' not in sys.modules, 'inference imported onnx'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hu_becomes_int16_by_rounding_and_clipping():
    values = np.array([-3024.4, -0.6, 0.5, 1.5, 40000.0, -40000.0])
    assert as_int16_hu(values).tolist() == [-3024, -1, 0, 2, 32767, -32768]
    wide = np.array([70000, -5], dtype=np.int32)
    assert as_int16_hu(wide).dtype == np.int16 and as_int16_hu(wide).tolist() == [32767, -5]
