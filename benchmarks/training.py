"""Seconds per training step of each network at the paper's sizes, and peak memory.

    python benchmarks/training.py [--runs 2] [--batch 1] [--steps NAME ...] [--device auto]
                                  [--size S] [--bf16]

Steps (``training/steps.py``, on random volumes; each in a fresh process after one warm-up
step): ``coarse`` and ``fine`` supervised steps (forward, Dice, backward, Adam) at 160³ and
192³; ``disc`` the discriminator step at 160³ (a generator forward, then the discriminator's
forward and backward); ``unlabelled`` the coarse unlabelled step (generator forward and
backward on the image and its noised copy, two discriminator forwards). Batch ``--batch`` per
step (the paper's is 4 + 2 coarse, 8 + 4 fine, over 2 and 4 GPUs). On a GPU (``--device
cuda``, the default when there is one): fp16 autocast, and peak GPU memory from torch.
``--size S``: S³ inputs instead of the paper's (a ``--patch-size`` step); ``--bf16``: bf16
autocast on a CPU (``--cpu-bf16``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks._child import median, peak_rss_mib, run_child  # noqa: E402

STEPS = ("coarse", "fine", "disc", "unlabelled")


def child(step: str, runs: int, batch: int, device_name: str, size: int, bf16: bool) -> dict:
    import torch

    from inference.organs import NUM_ORGANS
    from training.config import TrainConfig
    from training.networks import build_network, network_spec
    from training.steps import Trainer, discriminator_step, supervised_step, unlabelled_step

    device = torch.device(device_name)
    stage = "fine" if step == "fine" else "coarse"
    spec = network_spec(stage, **({"input_size": size} if size else {}))
    net = build_network(spec).to(device)
    amp = device.type == "cuda"
    dtype = torch.float16 if amp else torch.bfloat16 if bf16 else None
    t = Trainer(
        net,
        torch.optim.Adam(net.parameters()),
        torch.amp.GradScaler(enabled=amp),
        autocast_dtype=dtype,
    )
    if step in ("disc", "unlabelled"):
        t.disc = build_network(network_spec("discriminator", input_size=spec.input_size))
        t.disc = t.disc.to(device)
        t.disc_optimizer = torch.optim.Adam(t.disc.parameters())
        t.disc_scaler = torch.amp.GradScaler(enabled=amp)
    g = torch.Generator(device=device).manual_seed(0)
    size = (batch, 1, *(spec.input_size,) * 3)
    x = torch.randn(size, generator=g, device=device)
    target = torch.rand((batch, NUM_ORGANS, *size[2:]), generator=g, device=device) > 0.9
    target = target.float()
    cfg = TrainConfig()
    run = {
        "coarse": lambda: supervised_step(t, x, target),
        "fine": lambda: supervised_step(t, x, target),
        "disc": lambda: discriminator_step(t, x, target, cfg, g),
        "unlabelled": lambda: unlabelled_step(t, x, cfg, g),
    }[step]

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up: allocator, cuDNN algorithm choice
    times = [timed() for _ in range(runs)]
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"times": times, "peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": gpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--size", type=int, default=0, help="input side (default: the paper's)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on a CPU")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "training.json")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        step, device = args.child
        print(json.dumps(child(step, args.runs, args.batch, device, args.size, args.bf16)))
        return 0

    rows = []
    for step in args.steps:
        opts = ["--runs", str(args.runs), "--batch", str(args.batch), "--size", str(args.size)]
        opts += ["--bf16"] if args.bf16 else []
        r = run_child(Path(__file__), [step, args.device, *opts])
        rows.append({"step": step, **r, "median_s": median(r["times"])})
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        print(
            f"{step:<11} {rows[-1]['median_s']:>8.2f} s  RSS {r['peak_rss_mib']:>6.0f} MiB  "
            f"GPU {gpu} MiB",
            flush=True,
        )
    size = f"{args.size}³" if args.size else "paper sizes"
    precision = "bf16" if args.bf16 and args.device == "cpu" else "default precision"
    print(
        f"({args.device}, batch {args.batch}, {size}, {precision}, "
        f"median of {args.runs} after a warm-up step)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "device": args.device,
        "batch": args.batch,
        "size": args.size,
        "bf16": args.bf16,
        "runs": args.runs,
        "rows": rows,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
