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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import SimpleITK as sitk

from .io import InputError, case_name, find_inputs, hu_array, read_ct, write_labels
from .pipeline import DeviceError, Result, Segmenter

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

log = logging.getLogger("inference")
STAGES = ("read", "coarse", "region", "fine", "post", "write")  # their sum is a record's total


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


def read_case(path: Path) -> tuple[sitk.Image, np.ndarray, float]:
    """The image, its HU array and the seconds they took; raises InputError for a bad input."""
    start = time.perf_counter()
    try:
        image = read_ct(path)
        volume = hu_array(image, path)
    except OSError as e:  # e.g. a file removed or made unreadable since the folder was listed
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from e
    return image, volume, time.perf_counter() - start


def write_case(labels: np.ndarray, image: sitk.Image, path: Path, out_dir: Path) -> float:
    """Write a case's labels (atomically); returns the seconds it took. Raises OSError."""
    start = time.perf_counter()
    try:
        write_labels(labels, image, out_dir / f"{case_name(path)}.nii.gz")
    except OSError as e:  # e.g. the output folder is full or not writable
        raise OSError(f"{path}: cannot write its labels ({e})") from e
    return time.perf_counter() - start


def timings_record(
    segmenter: Segmenter, path: Path, volume: np.ndarray, result: Result, read: float
) -> dict:
    """A case's ``--timings`` line so far; ``write`` and ``total`` come once it is written."""
    return {
        "case": case_name(path),
        "shape": list(volume.shape),
        "providers": segmenter.providers,
        "roi_source": result.region,
        "read": read,
        **result.timings,
    }


def segment_file(segmenter: Segmenter, path: Path, out_dir: Path) -> dict:
    """Segment one file and write its labels, one step after another; its timings record."""
    image, volume, read = read_case(path)
    result = segmenter.segment(volume, image.GetSpacing(), image.GetDirection())
    write = write_case(result.labels, image, path, out_dir)
    record = {**timings_record(segmenter, path, volume, result, read), "write": write}
    return {**record, "total": sum(record[k] for k in STAGES)}


def finish_write(writing: tuple[Future, dict] | None, timings: Path | None) -> int:
    """Wait for a case's write; log its timings, or report it. Returns the number failed."""
    if writing is None:
        return 0
    future, record = writing
    try:
        record["write"] = future.result()
    except OSError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    record["total"] = sum(record[k] for k in STAGES)
    if timings:
        with open(timings, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


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
    # One I/O thread reads the next case and writes the previous one while this thread runs the
    # networks (ONNX Runtime releases the GIL), so in a batch read and write time is hidden.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="io") as io:
        reading = io.submit(read_case, inputs[0])
        writing: tuple[Future, dict] | None = None
        for n, path in enumerate(inputs):
            if sys.stderr.isatty():
                print(f"[{n + 1}/{len(inputs)}] {path.name}", file=sys.stderr)
            try:
                image, volume, read = reading.result()
            except InputError as e:
                print(f"ERROR {e}", file=sys.stderr)
                failed += 1
                image = None
            if n + 1 < len(inputs):
                reading = io.submit(read_case, inputs[n + 1])
            if image is not None:
                result = segmenter.segment(volume, image.GetSpacing(), image.GetDirection())
                record = timings_record(segmenter, path, volume, result, read)
            failed += finish_write(writing, args.timings)
            writing = None
            if image is not None:
                writing = (io.submit(write_case, result.labels, image, path, args.output), record)
        failed += finish_write(writing, args.timings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
