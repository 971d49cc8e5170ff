"""Constants shared by the tests."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CT = ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz"

# The paper's architectures at sizes a 2-core CPU runs in seconds.
SMALL = {
    "coarse": {"input_size": 32, "channels": (2, 4, 8, 16, 32)},
    "fine": {"input_size": 64, "channels": (4, 8, 16, 32, 64)},
    "discriminator": {"input_size": 32, "channels": (8, 16, 32, 64)},
}
