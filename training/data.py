"""Reading the training cache that ``python -m training.prepare`` writes (numpy only).

Layout under the cache folder (arrays are canonical ``(z, y, x)``, int16 HU and uint8 labels):
``coarse/{labelled,unlabelled}/<case>.image.npy`` (+ ``.labels.npy`` when labelled),
``fine/{labelled,unlabelled}/<case>_<k>.image.npy`` (+ ``.labels.npy``), and ``index.json``:
per stage the settings it was built with, per case its sources' sha256, geometry and entries.
"""

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from inference.stage_info import STAGES

from .config import ConfigError

FORMAT = "flare22-cache/1"
INDEX_NAME = "index.json"
KINDS = ("labelled", "unlabelled")


class CacheError(ValueError):
    """A cache that is missing, unreadable or built for other settings; names the cache."""


def _hint(cache: Path, stage: str | None = None, size: int | None = None) -> str:
    extra = f" --stages {stage} --{stage}-size {size}" if stage and size else ""
    return f"run: python -m training.prepare --dataset DATASET --out {cache}{extra}"


def read_index(path: Path) -> dict:
    """An ``index.json``; ``CacheError`` naming it when unreadable, of another format or
    malformed (no stage settings, or a case without its kind and entries)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable ({e})") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else None
        raise CacheError(f"{path}: format {got!r}, expected {FORMAT!r}")
    stages, cases = index.get("stages"), index.get("cases")
    if not isinstance(stages, dict) or not isinstance(cases, dict):
        raise CacheError(f"{path}: malformed (no 'stages' or 'cases' mapping)")
    for name, record in cases.items():
        if not (
            isinstance(record, dict)
            and record.get("kind") in KINDS
            and isinstance(record.get("entries"), dict)
        ):
            raise CacheError(f"{path}: malformed case {name!r} (needs a kind and its entries)")
    return index


def load_index(cache: Path) -> dict:
    """The cache's ``index.json`` (``read_index``); ``CacheError`` saying how to make one."""
    path = Path(cache) / INDEX_NAME
    if not path.is_file():
        raise CacheError(f"{cache}: no training cache here (no {INDEX_NAME}); {_hint(cache)}")
    try:
        return read_index(path)
    except CacheError as e:
        raise CacheError(f"{e}; {_hint(cache)}") from e


def check_cache(cache: Path, stage: str, size: int) -> None:
    """``CacheError`` unless ``cache`` holds ``stage`` entries built for a ``size``^3 input."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    settings = load_index(cache).get("stages", {}).get(stage)
    if settings is None:
        raise CacheError(f"{cache}: holds no {stage} entries; {_hint(cache, stage, size)}")
    if settings.get("size") != size:
        raise CacheError(
            f"{cache}: {stage} entries were built for size {settings.get('size')}, "
            f"the network takes {size}; {_hint(cache, stage, size)}"
        )


class CacheSet:
    """The entries of one stage and kind, read memory-mapped; ``set[i] -> (image, labels)``.

    ``cases`` keeps only those cases' entries (e.g. one side of ``split``); ``size`` checks
    the cache was built for that network input size first; ``repeat`` lists a case's entries
    that many times (``oversampling``).
    """

    def __init__(
        self,
        cache: Path,
        stage: str,
        kind: str = "labelled",
        cases: Iterable[str] | None = None,
        size: int | None = None,
        repeat: Mapping[str, int] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.cache = Path(cache)
        if size is not None:
            check_cache(self.cache, stage, size)
        index = load_index(self.cache)
        self.stage, self.kind = stage, kind
        self.size: int | None = index.get("stages", {}).get(stage, {}).get("size")
        records = {
            name: r
            for name, r in index.get("cases", {}).items()
            if r.get("kind") == kind and stage in r.get("entries", {})
        }
        wanted = sorted(records) if cases is None else sorted(set(cases))
        missing = [c for c in wanted if c not in records]
        if missing:
            raise CacheError(f"{self.cache}: no {stage}/{kind} entries for cases {missing}")
        repeat = repeat or {}
        entries = [(c, s) for c in wanted for s in records[c]["entries"][stage]]
        entries = [e for e in entries for _ in range(repeat.get(e[0], 1))]
        self._stems = [s for _, s in entries]
        self.cases = [c for c, _ in entries]
        self.names = [s.rsplit("/", 1)[-1] for s in self._stems]

    def __len__(self) -> int:
        return len(self._stems)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Entry ``i``: int16 image and uint8 labels (None when unlabelled), read-only memmaps."""
        stem = self.cache / self._stems[i]
        image = np.load(f"{stem}.image.npy", mmap_mode="r")
        labels = np.load(f"{stem}.labels.npy", mmap_mode="r") if self.kind == "labelled" else None
        return image, labels

    @property
    def case_names(self) -> list[str]:
        """The distinct cases, sorted."""
        return sorted(set(self.cases))


def oversampling(specs: Sequence[str], cases: Iterable[str]) -> dict[str, int]:
    """``"PATTERN=N"`` specs -> {case: N} for the cases whose name matches (shell patterns).

    A case matched by several specs takes the last; a spec that is malformed or matches no
    case is a ``ConfigError`` (a typo would otherwise train on the wrong mix, silently).
    """
    names = sorted(set(cases))
    out: dict[str, int] = {}
    for spec in specs:
        pattern, sep, count = spec.rpartition("=")
        if not sep or not pattern or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"oversample {spec!r}: expected PATTERN=N with N >= 1")
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(f"oversample {spec!r}: no training case matches {pattern!r}")
        out.update(dict.fromkeys(matched, int(count)))
    return out


def split(
    cases: Sequence[str], val: float | Sequence[str], seed: int = 0
) -> tuple[list[str], list[str]]:
    """Cases -> (train, val) case names, sorted; repeated names count once.

    Split cases, not entries: pass ``CacheSet.cases`` and build one set per side with
    ``cases=`` so that every crop of a case lands on the same side. ``val`` is a fraction of
    the cases (at least one case each side when there are two or more) or explicit names.
    """
    unique = sorted(set(cases))
    if isinstance(val, str):
        raise TypeError("val must be a fraction or a list of case names, not one string")
    if isinstance(val, int | float):
        if not 0 <= val < 1:
            raise ConfigError(f"val fraction {val} is not in [0, 1)")
        n_val = round(val * len(unique))
        if val > 0 and len(unique) >= 2:
            n_val = min(max(n_val, 1), len(unique) - 1)
        order = np.random.default_rng(seed).permutation(len(unique))
        chosen = {unique[i] for i in order[:n_val]}
    else:
        chosen = set(val)
        unknown = sorted(chosen - set(unique))
        if unknown:
            raise ConfigError(f"validation cases not among the cases: {unknown}")
    return [c for c in unique if c not in chosen], sorted(chosen)
