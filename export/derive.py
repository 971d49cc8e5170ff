"""Graphs of another precision derived from the stored ones: ``python -m export --derive DIR``.

Git keeps one precision of each retrain (the fp32 graphs the CPU runs); the fp16 graphs the GPU
runs are made from them. Each stored graph carries its network's architecture in its metadata
and its weights as initializers, so the torch checkpoint is rebuilt from the file alone
(``export.check.load_stage``) and exported again at the other precision with the source's
version and checkpoint hash. With the pinned torch this reproduces the graphs that an export
from the training checkpoint writes, byte for byte; ``manifest.json`` keeps every graph's
sha256, so a derived file is checked against the one that was measured.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from inference.stage_info import STAGES, graph_filename
from training.checkpoint import sha256_file

from .check import load_stage
from .onnx_file import MANIFEST, export_stage

log = logging.getLogger(__name__)

SOURCE_PRECISION = "fp32"  # what git stores (weights/), see the README's "Weights in git"


@dataclass(frozen=True)
class Derived:
    path: Path
    source: Path
    manifest_sha256: str | None  # what manifest.json records for this file, if anything

    @property
    def matches_manifest(self) -> bool | None:
        """Byte-identical to the graph the manifest records (None when it records none)."""
        if self.manifest_sha256 is None:
            return None
        return sha256_file(self.path) == self.manifest_sha256


def derive_graphs(weights: Path, precision: str, out: Path | None = None) -> list[Derived]:
    """Write ``precision`` graphs of both stages from ``weights``' stored fp32 graphs into
    ``out`` (default ``weights``). Raises FileNotFoundError when a stored graph is missing."""
    out = out or weights
    manifest_file = weights / MANIFEST
    recorded = (
        json.loads(manifest_file.read_text()).get("graphs", {}) if manifest_file.is_file() else {}
    )
    derived = []
    for stage in STAGES:
        source = weights / graph_filename(stage, SOURCE_PRECISION)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no stored graph to derive {precision} from")
        _, info, ckpt = load_stage(source)
        path = export_stage(ckpt, precision, out, info.version, info.checkpoint_sha256)
        sha = recorded.get(path.name, {}).get("sha256")
        derived.append(Derived(path, source, sha))
        log.info("derived %s from %s", path, source)
    return derived
