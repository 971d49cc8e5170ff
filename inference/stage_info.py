"""What a stage graph needs to be used correctly, carried in its ONNX metadata.

Export writes a ``StageInfo`` into each graph's ``metadata_props``; the runtime reads it back
(``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``) instead of
repeating constants. All values are strings in ONNX, so non-string fields travel as JSON.
"""

import json
from dataclasses import asdict, dataclass, fields

from .organs import LABEL_NAMES

PREFIX = "flare22."
# The stage graphs' one input and one output (export names them, the runtime feeds them).
INPUT_NAME = "image"
OUTPUT_NAME = "labels"

# How intensities are normalised inside the graph (``training.transforms.normalize``).
NORMALIZATION = "clip to hu_window, then z-score with the resized volume's own mean and std"


class StageInfoError(ValueError):
    """A stage graph's metadata is missing or malformed, or not what its use needs."""


@dataclass(frozen=True)
class StageInfo:
    stage: str  # "coarse" or "fine"
    precision: str  # "fp32" or "fp16"
    input_size: int  # side of the cube the network sees, in voxels
    hu_window: tuple[float, float]
    normalization: str
    labels: dict[int, str]  # 0 is background
    threshold: float  # a voxel is an organ where that organ's sigmoid is above this
    roi_margin_mm: float  # margin around the coarse organs' box for the fine crop
    min_component_mm3: float  # post-processing: other components kept above this volume
    opset: int
    version: str  # project version that exported the graph (git describe)
    checkpoint_sha256: str  # of the source checkpoint, or "random-init seed=N"
    network: str  # the training.networks.NetworkSpec as JSON
    io: str  # the graph's inputs and outputs in words

    def to_metadata(self) -> dict[str, str]:
        out = {}
        for key, value in asdict(self).items():
            out[PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "graph") -> "StageInfo":
        values = {}
        for f in fields(cls):
            raw = meta.get(PREFIX + f.name)
            if raw is None:
                raise StageInfoError(f"{source}: metadata has no {PREFIX + f.name!r}")
            try:
                values[f.name] = raw if f.type is str else json.loads(raw)
            except json.JSONDecodeError as e:
                raise StageInfoError(f"{source}: metadata {f.name}={raw!r} is not JSON") from e
        values["hu_window"] = tuple(values["hu_window"])
        values["labels"] = {int(k): v for k, v in values["labels"].items()}
        return cls(**values)

    def check(self, stage: str, precision: str, source: str) -> None:
        """``StageInfoError`` naming ``source`` unless this is the ``stage`` graph at
        ``precision`` with FLARE22's label ids and names (a swapped or foreign file)."""
        wrong = [
            f"{what} {got!r}, expected {want!r}"
            for what, got, want in (
                ("stage", self.stage, stage),
                ("precision", self.precision, precision),
            )
            if got != want
        ]
        ids = sorted(LABEL_NAMES.keys() | self.labels.keys())
        differ = [k for k in ids if self.labels.get(k) != LABEL_NAMES.get(k)]
        if differ:  # the first is enough to recognise another dataset's label map
            k = differ[0]
            wrong.append(
                f"{len(differ)} labels differ from FLARE22's (label {k} "
                f"{self.labels.get(k)!r}, expected {LABEL_NAMES.get(k)!r})"
            )
        if wrong:
            what = f"not a FLARE22 {stage} {precision} graph"
            raise StageInfoError(f"{source}: {what}: {'; '.join(wrong)}")


STAGES = ("coarse", "fine")
PRECISIONS = ("fp32", "fp16")


def graph_filename(stage: str, precision: str) -> str:
    """File name of a stage graph inside a weights folder, e.g. ``fine_fp16.onnx``."""
    return f"{stage}_{precision}.onnx"
