"""``python -m inference -i IN -o OUT``: segment every CT in a folder.

One ``<case>.nii.gz`` of uint8 labels (0 background, 1..13 organs) per input, with the input's
shape, spacing, origin and direction; ``<case>_0000.nii.gz`` becomes ``<case>.nii.gz``. A bad
input prints ``ERROR <file>: <reason>`` on stderr, writes nothing, and the run goes on; the exit
code is then 1. No input images: exit code 2.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import onnxruntime as ort

from .io import InputError, case_name, find_inputs, hu_array, read_ct, write_labels
from .pipeline import DeviceError, Segmenter

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

log = logging.getLogger("inference")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--input", type=Path, required=True, help="folder of CT images")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for label maps")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="stage graphs folder")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--timings", type=Path, help="append per-case timings here as JSON lines")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def segment_file(segmenter: Segmenter, path: Path, out_dir: Path) -> dict:
    """Segment one file and write its labels; returns its timings record."""
    start = time.perf_counter()
    image = read_ct(path)
    volume = hu_array(image, path)
    read = time.perf_counter() - start
    result = segmenter.segment(volume, image.GetSpacing(), image.GetDirection())
    t = time.perf_counter()
    write_labels(result.labels, image, out_dir / f"{case_name(path)}.nii.gz")
    write = time.perf_counter() - t
    return {
        "case": case_name(path),
        "shape": list(volume.shape),
        "providers": segmenter.providers,
        "roi_source": result.region,
        "read": read,
        **result.timings,
        "write": write,
        "total": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # ONNX Runtime warns once per convolution that the CUDA provider runs cuDNN's default
    # algorithm (our choice, inference.sessions): hundreds of lines per case. Errors still show.
    ort.set_default_logger_severity(2 if args.verbose else 3)
    if not args.input.is_dir():
        print(f"error: {args.input}: not a folder", file=sys.stderr)
        return 2
    inputs = find_inputs(args.input)
    if not inputs:
        print(
            f"error: {args.input}: no input images (*{', *'.join(('.nii.gz', '.mha'))}, ...)",
            file=sys.stderr,
        )
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        segmenter = Segmenter(args.weights, args.device)
    except (DeviceError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for n, path in enumerate(inputs, 1):
        if sys.stderr.isatty():
            print(f"[{n}/{len(inputs)}] {path.name}", file=sys.stderr)
        try:
            record = segment_file(segmenter, path, args.output)
        except InputError as e:
            print(f"ERROR {e}", file=sys.stderr)
            failed += 1
            continue
        except OSError as e:  # e.g. the output folder is full or not writable
            print(f"ERROR {path}: cannot write its labels ({e})", file=sys.stderr)
            failed += 1
            continue
        if args.timings:
            with open(args.timings, "a") as f:
                f.write(json.dumps(record) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
