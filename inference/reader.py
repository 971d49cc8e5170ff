"""Inputs read in a child process, so that a reader that crashes, hangs or chatters costs one
case, not the batch.

The image readers (ITK, GDCM, MetaIO, nifticlib, libjpeg) are C++ and C: a header they choke on
ends the process that called them, and they print warnings of their own on stderr. Every
header and image is therefore read by one long-lived ``python -m inference.reader`` process:

- its death (a signal, an abort) becomes that case's ``ERROR`` line, with the reader's last
  words, and the next case gets a new reader;
- a read that takes longer than ``READ_TIMEOUT_S`` is killed and reported the same way;
- its stderr goes to a file, never to the batch's: third-party chatter does not reach the user
  (``-v`` logs it);
- the voxels come back as int16 HU through a socket straight into an array the parent
  allocates (benchmarks/reader.py measures the cost), no shared-memory segment to leak or
  outgrow (a container's /dev/shm is 64 MB).

The process starts once per batch (about half a second, while the networks load) and is
killed when the batch ends or is stopped.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

# Reading a FLARE-sized case takes a fraction of a second, a 2000-slice DICOM series about ten;
# a reader still busy after this is stuck on a hostile file.
READ_TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Volume:
    """A case as read: int16 HU ``(z, y, x)`` voxels and all its label map takes from it."""

    volume: np.ndarray
    size: tuple[int, ...]  # ITK order: x, y, z
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    warnings: list[str] = field(default_factory=list)  # inference.plausibility's


class Reader:
    """The parent's end: ``header`` and ``read`` each run in the reader process."""

    def __init__(self, timeout: float = READ_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._scratch = Path(tempfile.mkdtemp(prefix="flare22-read-"))
        self._log = self._scratch / "stderr.log"
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket
        self._lock = threading.Lock()
        self._closed = False
        self._start()

    def _start(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._sock.close()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        with open(self._log, "wb") as chatter:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inference.reader",
                    str(theirs.fileno()),
                    str(self._scratch),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=chatter,
                stderr=chatter,
                env=env,
                # Ctrl-C reaches the batch, which stops the reader itself: a reader killed by
                # the terminal's SIGINT would read as a crash of the case.
                start_new_session=True,
            )
        theirs.close()
        # Messages through the connection; the voxels raw through the socket beside it,
        # straight into the array (the connection would copy them twice).
        self._sock = ours
        self._sock.settimeout(self.timeout)
        self._conn = Connection(os.dup(ours.fileno()))

    def header(self, path: Path):
        """``inference.io.read_header(path)``, read in the reader process."""
        return self._call("header", path)

    def read(self, path: Path, header=None) -> Volume:
        """The case's voxels as int16 HU and its geometry; ``InputError`` for a bad input, a
        reader that died on it, or one that took longer than the timeout."""
        return self._call("read", path, header)

    def _call(self, op: str, path: Path, *args):
        with self._lock:
            if self._closed:
                raise InputError(f"{path}: not read, the batch is stopping")
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((op, path, *args))
                reply = self._receive(path)
                if reply[0] == "error":
                    raise InputError(reply[1])
                if op == "header":
                    return reply[1]
                meta = reply[1]
                volume = np.empty(meta.pop("shape"), np.int16)
                self._receive_into(volume)
                return Volume(volume, **meta)
            except TimeoutError:
                self._kill()
                raise InputError(
                    f"{path}: reading it took over {self.timeout:g} s; given up"
                ) from None
            except (EOFError, OSError) as e:
                raise InputError(self._died(path, e)) from None
            finally:
                self._show_chatter()

    def _receive_into(self, volume: np.ndarray) -> None:
        view = memoryview(volume.reshape(-1)).cast("B")
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("the reader closed the socket")
            got += n

    def _receive(self, path: Path):
        self._wait(path)
        return self._conn.recv()  # type: ignore[union-attr]

    def _wait(self, path: Path) -> None:
        if not self._conn.poll(self.timeout):  # type: ignore[union-attr]
            self._kill()
            raise InputError(f"{path}: reading it took over {self.timeout:g} s; given up")

    def _died(self, path: Path, e: BaseException) -> str:
        """The ERROR reason for a reader that died while reading ``path``."""
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(5)
            except subprocess.TimeoutExpired:  # alive, but its end of the socket is gone
                proc.kill()
                code = proc.wait()
        self._proc = None
        if self._closed:
            return f"{path}: not read, the batch is stopping"
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += ", out of memory?"
        else:
            how = f"exited with {code}" if code is not None else type(e).__name__
        last = self._last_words()
        return f"{path}: the image reader crashed on it ({how}{f': {last}' if last else ''})"

    def _last_words(self) -> str:
        try:
            lines = [ln.strip() for ln in self._log.read_text(errors="replace").splitlines()]
        except OSError:
            return ""
        lines = [ln for ln in lines if ln]
        return lines[-1][:200] if lines else ""

    def _show_chatter(self) -> None:
        """The reader's stderr of this call into the log (shown with -v), then emptied."""
        try:
            text = self._log.read_text(errors="replace").strip()
            if text:
                log.info("the image reader said: %s", text)
                with open(self._log, "r+b") as f:
                    f.truncate(0)
        except OSError:
            pass

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """End the reader process now (a read in progress fails) and remove its scratch."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._conn is not None:
            self._conn.close()
            self._sock.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The reader process's end.


def _serve(conn: Connection, sock: socket.socket, scratch: Path) -> None:
    from .hu import as_int16_hu
    from .io import hu_array, read_ct, read_header
    from .plausibility import plausibility_warnings

    while True:
        try:
            op, path, *args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        for stale in scratch.glob("input*"):
            stale.unlink(missing_ok=True)
        try:
            if op == "header":
                conn.send(("ok", read_header(path, scratch)))
                continue
            start = time.perf_counter()
            image = read_ct(path, args[0], scratch)
            array = hu_array(image, path)
            warnings = plausibility_warnings(array, image.GetSpacing())
            volume = np.ascontiguousarray(as_int16_hu(array))
            meta = {
                "shape": volume.shape,
                "size": image.GetSize(),
                "spacing": image.GetSpacing(),
                "origin": image.GetOrigin(),
                "direction": image.GetDirection(),
                "warnings": warnings,
            }
            log.debug("read %s in %.2f s", path, time.perf_counter() - start)
        except InputError as e:
            conn.send(("error", str(e)))
            continue
        except OSError as e:  # e.g. removed or made unreadable since the folder was listed
            conn.send(("error", f"{path}: cannot read it ({e.strerror or e})"))
            continue
        except MemoryError:
            conn.send(("error", f"{path}: out of memory while reading it"))
            continue
        except Exception as e:  # anything else one file raised is that file's error
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__
            conn.send(("error", f"{path}: cannot read it ({reason})"))
            continue
        conn.send(("ok", meta))
        # ``volume`` may be a view of the image's buffer (int16 input): both live until sent.
        sock.sendall(memoryview(volume).cast("B"))
        del volume, array, image


def main() -> None:
    fd, scratch = int(sys.argv[1]), Path(sys.argv[2])
    # SIGTERM to the reader alone (a container's stop reaches every process) ends it quietly;
    # the parent reports the stop.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _serve(Connection(fd), socket.socket(fileno=os.dup(fd)), scratch)


if __name__ == "__main__":
    main()
