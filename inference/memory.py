"""Will a case fit in memory? An estimate from its header, made before its voxels are read.

A scan whose header declares more voxels than the machine can hold (a decompression bomb: a
small ``.nii.gz`` of a huge, mostly empty volume; or simply a very large scan on a small
machine) would otherwise be killed by the kernel mid-batch, taking the remaining cases with it.
"""

import os
from pathlib import Path

from .io import Header

# Host memory of the pipeline per source voxel beyond the input array itself (int16 HU and
# canonical copies, the coarse graph's fp32 cast, the uint8 labels, and when the fine crop is
# the whole volume its crop-size maps), fitted to the peak RSS of ``python -m inference`` on
# the CPU (benchmarks/pipeline.py, int16 inputs of 134, 300 and 600 x 512 x 512: 2536, 3012,
# 4200 MiB, slope 11.5-14.3 bytes per voxel).
PIPELINE_BYTES_PER_VOXEL = 14
# A network's activations per voxel of its input cube on the CPU (fp32, ONNX Runtime): the fine
# network at 192³ peaked at 1931 MiB (~290 B), the coarse at 160³ at 1271 MiB (~325 B). The
# arenas shrink after each run, so the larger stage sets the peak. On a GPU the activations
# live on the device and this overestimates the host's needs.
NETWORK_BYTES_PER_VOXEL = 330
# The CPU engine (inference.openvino_stage) holds no float array of the volume or the crop: per
# source voxel its int16 HU (a copy when the input is of another type) and about a byte more
# (the labels). Its networks: OpenVINO's working memory and the fine logits, about 310 B per
# voxel of the cube. Fitted to the peak RSS of python -m inference (int16 inputs of 134, 536
# and 1200 x 512 x 512: 2150, 2334, 2738 MiB, slope 2.1 bytes per voxel with the input).
ENGINE_BYTES_PER_VOXEL = 1
ENGINE_NETWORK_BYTES_PER_VOXEL = 310


def reader_bytes_per_voxel(bytes_per_voxel: int) -> int:
    """The reader process's peak per voxel (``inference.reader``): the image in its own type
    and its int16 copy (none for int16; converted in slabs, so no float temporaries)."""
    return 2 if bytes_per_voxel == 2 else bytes_per_voxel + 2


def estimated_peak_bytes(
    header: Header, network_sides: tuple[int, ...], engine: str = "onnxruntime"
) -> int:
    """Peak memory for one case of ``header``'s size and voxel type, with the networks on
    ``engine`` ("onnxruntime" or "openvino": ``inference.sessions``), counted by the working
    types, not the input's (a uint8 file still costs int16 and more): the larger of reading
    (the reader process's arrays and the int16 copy this process receives) and segmenting
    (this process's int16 volume, the pipeline's arrays and the networks)."""
    cube = max(side**3 for side in network_sides)
    reading = header.voxels * (reader_bytes_per_voxel(header.bytes_per_voxel) + 2)
    if engine == "openvino":
        segmenting = ENGINE_NETWORK_BYTES_PER_VOXEL * cube + header.voxels * (
            2 + ENGINE_BYTES_PER_VOXEL
        )
    else:
        segmenting = NETWORK_BYTES_PER_VOXEL * cube + header.voxels * (2 + PIPELINE_BYTES_PER_VOXEL)
    return max(reading, segmenting)


def available_bytes() -> int | None:
    """Memory this process may still take: the system's available memory, bounded by a cgroup
    (container) limit when there is one; None where neither can be read (not Linux)."""
    limits = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(limits) if limits else None


def memory_error(
    header: Header, network_sides: tuple[int, ...], engine: str = "onnxruntime"
) -> str | None:
    """Why ``header``'s case would not fit in memory, or None when it fits (or can't be told)."""
    available = available_bytes()
    if available is None:
        return None
    # What the process already holds (sessions, another case being written) stays held.
    need = estimated_peak_bytes(header, network_sides, engine) - _rss_bytes()
    if need <= available:
        return None
    shape = "x".join(str(n) for n in reversed(header.size))
    return (
        f"{header.path}: needs about {_gib(need)} GiB of memory ({shape} voxels of "
        f"{header.bytes_per_voxel} bytes) but {_gib(available)} GiB are available; "
        "not segmented"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, then v1); None if unlimited."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # v2 writes "max" when unlimited; v1 a number near 2^63.
        if limit == "max" or int(limit) >= 2**60:
            return None
        return int(limit) - usage
    return None


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
