"""python -m inference -i IN -o OUT: segment every CT in a folder.

Inputs: image files in IN (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr) and DICOM series: IN itself
when it holds one, or folders below it up to 4 levels deep (patient/study/series exports).
Outputs: OUT/<case>.nii.gz, uint8 labels (0 background, 1..13 organs) with the input's shape,
spacing, origin and direction; <case>_0000.nii.gz gives <case>.nii.gz, other files keep their
stem, a DICOM folder gives its folder's name. Outputs appear whole (temporary name, then
rename) and are marked in their header, so a later run over a folder holding them skips them.

Refused before any work (exit 2): an output that would overwrite an input or land inside a
DICOM input folder; an output folder that can't be created or written; no input images;
graphs missing or not usable. A case that fails (unreadable, corrupt or short data, a header
or direction that can't be trusted, too large for the memory available, two inputs with one
case name, a name that can't give an output, a reader that crashed on it, an error while
segmenting or writing) prints "ERROR <file>: <reason>", writes nothing, and the others go on:
exit 1. An input that does not look like an abdominal CT prints "WARNING <file>: ..." and is
segmented; an entry of the folder that is not read prints "WARNING <entry>: skipped: <why>".
Inputs are read in a child process (inference.reader). Stopped by SIGTERM or SIGINT: the run
ends within seconds, leaves no partial file, exits 143 or 130.
"""

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from .discovery import scan_inputs, shown
from .io import Geometry, Header, InputError, case_name, partial_path, write_labels
from .memory import memory_error
from .openvino_stage import CPU_ENGINES
from .pipeline import ORT_ERRORS, DeviceError, Result, Segmenter
from .plan import Case, PlanError, plan_batch, prepare_output_folder
from .reader import Reader, Volume

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

log = logging.getLogger("inference")
# The seconds of each step in a --timings record; their sum is its "total".
TIMING_KEYS = ("read", "coarse", "region", "fine", "post", "write")
T = TypeVar("T")
# How long a stopped batch waits for the write under way before removing its temporary file.
STOP_WRITE_WAIT_S = 2.0
# How long a batch that ends before its first case waits for the networks it was loading.
LOAD_WAIT_S = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-i", "--input", type=Path, required=True, help="folder of CT images, or one DICOM series"
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for label maps (created)"
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=DEFAULT_WEIGHTS,
        help="folder of the stage graphs (coarse_fp32.onnx, fine_fp32.onnx; *_fp16.onnx for "
        "CUDA) [%(default)s: the shipped ones]",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="auto: CUDA with the fp16 graphs when ONNX Runtime has it and it works, else the "
        "CPU with the fp32 graphs (a warning says why); cuda: fail instead [%(default)s]",
    )
    p.add_argument(
        "--cpu-engine",
        choices=CPU_ENGINES,
        default="auto",
        help="the networks' engine on the CPU. auto: OpenVINO f32 where it is installed "
        "(ONNX Runtime fp32's labels, faster, memory flat in slices; = openvino-f32), else "
        "ONNX Runtime fp32. openvino: the fine network in bf16 where the CPU has it, faster "
        "still, labels 99.99 %% the same but a small organ can fall under DSC 0.99 "
        "[%(default)s]",
    )
    p.add_argument("--timings", type=Path, help="append per-case timings here as JSON lines")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="progress details, and tracebacks of errors"
    )
    return p.parse_args(argv)


@dataclass
class Loaded:
    """A case read and checked (``inference.reader.Volume``) and the seconds reading took."""

    case: Volume
    seconds: float

    @property
    def volume(self) -> np.ndarray:
        return self.case.volume

    @property
    def warnings(self) -> list[str]:
        return self.case.warnings

    @property
    def geometry(self) -> Geometry:
        c = self.case
        return Geometry(c.size, c.spacing, c.origin, c.direction)


_shared_reader: Reader | None = None


def shared_reader() -> Reader:
    """One reader process for the calls that bring none (benchmarks, tests), ended at exit."""
    global _shared_reader
    if _shared_reader is None:
        _shared_reader = Reader()
        atexit.register(_shared_reader.close)
    return _shared_reader


def read_case(
    path: Path,
    network_sides: tuple[int, ...] = (),
    header: Header | None = None,
    engine: str = "onnxruntime",
    reader: Reader | None = None,
) -> Loaded:
    """Read a case in the reader process; raises InputError for a bad input or one that
    would not fit in memory (judged from its header before the voxels are read, when
    ``network_sides`` is given, for the networks on ``engine``). ``header``: the one planning
    read, if any."""
    reader = reader or shared_reader()
    start = time.perf_counter()
    header = header or reader.header(path)
    if network_sides and (reason := memory_error(header, network_sides, engine)):
        raise InputError(reason)
    return Loaded(reader.read(path, header), time.perf_counter() - start)


def write_case(labels: np.ndarray, geometry: Geometry, output: Path) -> float:
    """Write a case's labels (atomically); returns the seconds it took."""
    start = time.perf_counter()
    write_labels(labels, geometry, output)
    return time.perf_counter() - start


def timings_record(segmenter: Segmenter, path: Path, loaded: Loaded, result: Result) -> dict:
    """A case's ``--timings`` line so far; ``write`` and ``total`` come once it is written."""
    return {
        "case": case_name(path),
        "shape": list(loaded.volume.shape),
        "providers": segmenter.providers,
        "engine": segmenter.engine,
        "roi_source": result.roi_source,
        "warnings": loaded.warnings,
        "read": loaded.seconds,
        **result.timings,
    }


def segment_file(
    segmenter: Segmenter, path: Path, out_dir: Path, reader: Reader | None = None
) -> dict:
    """Segment one file and write its labels, one step after another; its timings record."""
    loaded = read_case(path, segmenter.network_sides, engine=segmenter.engine, reader=reader)
    geometry = loaded.geometry
    result = segmenter.segment(loaded.volume, geometry.spacing, geometry.direction)
    write = write_case(result.labels, geometry, out_dir / f"{case_name(path)}.nii.gz")
    record = {**timings_record(segmenter, path, loaded, result), "write": write}
    return {**record, "total": sum(record[k] for k in TIMING_KEYS)}


def describe(e: BaseException) -> str:
    """An exception as the reason part of an ERROR line."""
    if isinstance(e, MemoryError):
        return "out of memory"
    text = str(e).strip().splitlines()
    # A library's message can carry a whole buffer: a line stays readable.
    return f"{type(e).__name__}: {text[-1][:300]}" if text else type(e).__name__


class Stopped(BaseException):
    """SIGTERM arrived (``docker stop``). Not an Exception, so no case handler swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def in_daemon_thread(fn: Callable[..., T], *args: object) -> "Future[T]":
    """``fn(*args)`` in a thread of its own that does not hold the process open: a stopped
    batch exits within seconds even while numpy or a network's run cannot be interrupted."""
    future: Future[T] = Future()

    def work() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

    threading.Thread(target=work, name="compute", daemon=True).start()
    return future


class Batch:
    """Runs the cases in order: one I/O thread reads the next case (in the reader process)
    and writes the last while a compute thread runs the networks (ONNX Runtime and OpenVINO
    release the GIL), so in a batch read and write time is hidden. The calling thread only
    waits, so a signal reaches it at once."""

    def __init__(
        self, segmenter: Segmenter, cases: list[Case], timings: Path | None, reader: Reader
    ) -> None:
        self.segmenter, self.cases, self.timings, self.reader = segmenter, cases, timings, reader
        self.failed = 0
        self.written = 0
        self.writing: Future | None = None  # the last write submitted, and its output
        self.writing_to = Path()
        self.tty = sys.stderr.isatty()

    def run(self) -> None:
        io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="io")
        try:
            self._loop(io)
        except BaseException:
            # Stopped or interrupted: end the networks' run and the reader, drop queued reads
            # and writes; the write under way finishes (its temporary file is renamed or
            # removed). A compute thread still in numpy is left to the process's exit.
            self.segmenter.stop()
            self.reader.close()
            io.shutdown(wait=False, cancel_futures=True)
            if self.writing is not None and not wait([self.writing], STOP_WRITE_WAIT_S).done:
                # A huge label map still being compressed: its temporary file goes now (the
                # rename after the write then fails), so nothing partial stays. A write that
                # failed removed its own.
                partial_path(self.writing_to).unlink(missing_ok=True)
            raise
        io.shutdown()

    def _read(self, io: ThreadPoolExecutor, case: Case) -> Future:
        sides, engine = self.segmenter.network_sides, self.segmenter.engine
        return io.submit(read_case, case.source, sides, case.header, engine, self.reader)

    def _loop(self, io: ThreadPoolExecutor) -> None:
        reading = self._read(io, self.cases[0])
        writing: tuple[Future, Case, dict] | None = None
        for n, case in enumerate(self.cases):
            if self.tty:
                print(f"[{n + 1}/{len(self.cases)}] {shown(case.source.name)}", file=sys.stderr)
            loaded = self._wait_read(reading, case)
            if n + 1 < len(self.cases):
                reading = self._read(io, self.cases[n + 1])
            done = None if loaded is None else self._segment(case, loaded)
            # The labels are written with the image's geometry alone: its voxels go now, not
            # after the write, which runs while the next case is segmented.
            loaded = None
            self._finish_write(writing)
            writing = None
            if done is not None:
                labels, geometry, record = done
                future = io.submit(write_case, labels, geometry, case.output)
                self.writing, self.writing_to = future, case.output
                writing = (future, case, record)
        self._finish_write(writing)

    def _wait_read(self, reading: Future, case: Case) -> Loaded | None:
        try:
            loaded = reading.result()
        except InputError as e:
            self._error(str(e))
            return None
        except Exception as e:  # anything else that reading this one file raised
            self._error(f"{case.source}: cannot read it ({describe(e)})", e)
            return None
        if loaded.warnings:
            print(
                f"WARNING {shown(case.source)}: does not look like an abdominal CT: "
                f"{'; '.join(loaded.warnings)}; segmented anyway",
                file=sys.stderr,
            )
        return loaded

    def _segment(self, case: Case, loaded: Loaded) -> tuple[np.ndarray, Geometry, dict] | None:
        """The case's labels, geometry and timings record; None (and its ERROR line) if it
        failed."""
        geometry = loaded.geometry
        job = in_daemon_thread(
            self.segmenter.segment, loaded.volume, geometry.spacing, geometry.direction
        )
        try:
            result = job.result()
        except Exception as e:  # one case's failure (ORT error, memory, a bug) is its own
            self._error(f"{case.source}: segmentation failed ({describe(e)})", e)
            return None
        record = timings_record(self.segmenter, case.source, loaded, result)
        return result.labels, geometry, record

    def _finish_write(self, writing: tuple[Future, Case, dict] | None) -> None:
        if writing is None:
            return
        future, case, record = writing
        try:
            record["write"] = future.result()
        except Exception as e:
            self._error(f"{case.source}: cannot write its labels ({describe(e)})", e)
            return
        record["total"] = sum(record[k] for k in TIMING_KEYS)
        self.written += 1
        shape = "x".join(map(str, record["shape"]))
        print(
            f"done {shown(case.output.name)}: {shape} voxels (z, y, x), roi from "
            f"{record['roi_source']}, {record['total']:.1f} s "
            f"[{self.written + self.failed}/{len(self.cases)}]",
            file=sys.stderr,
        )
        if self.timings:
            with open(self.timings, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _error(self, line: str, e: BaseException | None = None) -> None:
        self.failed += 1
        print(f"ERROR {shown(line)}", file=sys.stderr)
        if e is not None and not isinstance(e, OSError | InputError):
            log.info("".join(traceback.format_exception(e)).rstrip())  # -v shows the cause


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # ONNX Runtime warns once per convolution that the CUDA provider runs cuDNN's default
    # algorithm (our choice, inference.sessions): hundreds of lines per case. Errors still show.
    ort.set_default_logger_severity(2 if args.verbose else 3)
    # As PID 1 in a container, a process that has no SIGTERM handler ignores `docker stop`
    # and is killed 10 s later, mid-write.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if in_main else None
    batches: list[Batch] = []
    try:
        return _run(args, batches)
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        done = f": {batches[0].written} of {len(batches[0].cases)} cases written" if batches else ""
        print(f"stopped by {signal.Signals(signum).name}{done}, none partial", file=sys.stderr)
        return 128 + signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, batches: list[Batch]) -> int:
    if not args.input.is_dir():
        print(f"error: {shown(args.input)}: not a folder", file=sys.stderr)
        return 2
    # The networks load while the inputs are planned (the reader process reads the headers).
    loading = in_daemon_thread(Segmenter, args.weights, args.device, None, args.cpu_engine)
    try:
        return _plan_and_run(args, batches, loading)
    finally:
        # A process that ends while OpenVINO still compiles in that thread dies in C++
        # (std::terminate at exit): let the load finish, its result unused, before returning.
        wait([loading], timeout=LOAD_WAIT_S)


def _plan_and_run(args: argparse.Namespace, batches: list[Batch], loading: Future) -> int:
    with Reader() as reader:
        scan = scan_inputs(args.input)
        for path, why in scan.skipped:
            print(f"WARNING {shown(path)}: {why}", file=sys.stderr)
        try:
            plan = plan_batch(scan.cases, args.output, reader)
            if plan.cases or plan.errors:
                prepare_output_folder(args.output)
        except PlanError as e:
            print(f"error: {shown(e)}", file=sys.stderr)
            return 2
        for path in plan.skipped:
            log.info("%s: skipped, a label map written by this tool", shown(path))
        if not plan.cases and not plan.errors:
            ours = f" ({len(plan.skipped)} of our own label maps skipped)" if plan.skipped else ""
            print(
                f"error: {shown(args.input)}: no input images (*.nii.gz, *.nii, *.mha, *.mhd, "
                f"*.nrrd, *.nhdr or DICOM folders){ours}",
                file=sys.stderr,
            )
            return 2
        for line in plan.errors:
            print(f"ERROR {shown(line)}", file=sys.stderr)
        if not plan.cases:
            return 1
        try:
            segmenter = loading.result()
        except (DeviceError, OSError, ValueError, *ORT_ERRORS) as e:  # e.g. a corrupt graph
            print(f"error: {shown(e)}", file=sys.stderr)
            return 2
        batch = Batch(segmenter, plan.cases, args.timings, reader)
        batches.append(batch)
        batch.run()
    return 1 if batch.failed or plan.errors else 0


if __name__ == "__main__":
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # Stopped: a compute thread may still be inside numpy, which no signal interrupts.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
