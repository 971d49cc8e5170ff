"""What reading in a separate process costs per case (inference.reader), at FLARE size.

    python benchmarks/reader.py [--runs 5] [--slices 134]

Times, median of ``--runs``, on one FLARE-sized case (512 x 512 x 134 at 0.8 x 0.8 x 2.5 mm,
the bundled CT resampled) written as .nii.gz, .nii and .mha: the old way (ITK reading in this
process, the voxels as int16) against the reader process (checks in Python, ITK in the child,
int16 voxels back through a socket), the process already started; and the reader's start-up.
Prints a table and writes build/bench/reader.json.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402

from benchmarks.pipeline import FLARE_SPACING, make_case  # noqa: E402
from inference.hu import as_int16_hu  # noqa: E402
from inference.reader import Reader  # noqa: E402
from tests.helpers import SAMPLE_CT  # noqa: E402


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--slices", type=int, default=134)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "reader.json")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "case.nii.gz"
        make_case(sitk.ReadImage(str(SAMPLE_CT)), FLARE_SPACING, (512, 512, args.slices), base)
        image = sitk.ReadImage(str(base))
        cases = [base]
        for name in ("case.nii", "case.mha"):
            sitk.WriteImage(image, str(Path(tmp) / name))
            cases.append(Path(tmp) / name)
        start = time.perf_counter()
        reader = Reader()
        reader.header(base)  # the first call waits for the process to be up
        startup = time.perf_counter() - start
        with reader:
            for case in cases:

                def old(case=case):
                    return as_int16_hu(sitk.GetArrayViewFromImage(sitk.ReadImage(str(case))))

                def new(case=case):
                    return reader.read(case, reader.header(case)).volume

                inproc, child = median_seconds(old, args.runs), median_seconds(new, args.runs)
                rows.append({"file": case.name, "in process": inproc, "reader process": child})
    print(f"| 512x512x{args.slices} int16 | ITK in process (s) | reader process (s) | cost (s) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        cost = r["reader process"] - r["in process"]
        print(f"| {r['file']} | {r['in process']:.3f} | {r['reader process']:.3f} | {cost:+.3f} |")
    print(f"reader process start-up (once per batch, while the networks load): {startup:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "startup": startup, "runs": args.runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
