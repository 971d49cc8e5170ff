"""The CSV logs of a training run: one row per iteration and process, one per validation."""

import csv
from pathlib import Path

from inference.organs import NUM_ORGANS

LOG_FIELDS = [
    "epoch",
    "step",
    "phase",
    "dice_loss",
    "disc_loss",
    "disc_acc",
    "unl_loss",
    "confidence",
    "lr",
    "seconds",
    "entries",  # the labelled entries of the step's batch
]


class Log:
    """Rows to ``log.csv`` (rank R > 0: ``log.rankR.csv``) and, by rank 0, ``val.csv``; a
    resumed run keeps only the earlier epochs' rows."""

    def __init__(self, run_dir: Path, resume_epoch: int, rank: int) -> None:
        self.path = run_dir / ("log.csv" if rank == 0 else f"log.rank{rank}.csv")
        self.val_path = run_dir / "val.csv"
        self._start(self.path, LOG_FIELDS, lambda r: int(r["epoch"]) < resume_epoch)
        if rank == 0:
            organs = [f"dice_{k}" for k in range(1, NUM_ORGANS + 1)]
            self._start(
                self.val_path,
                ["epoch", "mean_dice", *organs],
                lambda r: int(r["epoch"]) <= resume_epoch,
            )

    @staticmethod
    def _start(path: Path, fields: list[str], keep) -> None:
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if keep(r)]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    def row(self, path: Path, values: dict) -> None:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=list(values)).writerow(values)
