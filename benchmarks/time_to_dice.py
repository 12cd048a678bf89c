"""Time to a Dice: wall-clock minutes until the validation Dice (reference protocol) first reaches 0.80
and 0.85, for the real ``src/train.py`` with its defaults against a plain PyTorch loop written the way a
user would, on the same model, data, batch, schedule and seed.

Legs (``--legs``), each in its own process, one after the other:

* ``petseg``: ``python src/train.py model=resnet34_unet data.image_size=S data.batch_size=B ...`` with
  every other setting at its default (on CPU: bf16 + channels_last where the CPU has AMX or
  AVX512-BF16, retained host memory, fused AdamW, the data.cache default). Its val Dice per epoch is
  read from the run's TensorBoard log, with the event's wall time.
* ``petseg_fp32``: the same command with ``trainer.amp=off trainer.channels_last=false``: with the
  ``petseg`` leg, the accuracy-parity pair (same seed and recipe, full ``--epochs``).
* ``plain``: this file's ``plain_loop``: fp32, default memory format, ``torch.optim.AdamW`` with its
  defaults, a Dataset that decodes with PIL and applies the same albumentations pipeline in 2 DataLoader
  workers, shuffled by a seeded generator; the same network (``models.build_model``), loss (BCE + Dice),
  grad clipping (1.0), warm-up + cosine schedule per step and seed. It is scored every epoch with the
  project's ``evaluate()`` in fp32 (the same protocol; scoring is a few seconds of each epoch).

Minutes count from the leg's process start (interpreter, imports, dataset scan and cache build
included). A leg stops early once it has reached the last ``--targets`` value unless ``--full``
(the parity pair needs full runs). Results: a Markdown table and curves (minutes -> val Dice) under
``--out``, and one JSON line per leg.

    .venv/bin/python benchmarks/time_to_dice.py --root ../shared/data/oxford-iiit-pet --epochs 10 \\
        --legs petseg petseg_fp32 plain --full petseg petseg_fp32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LEGS = ("petseg", "petseg_fp32", "plain")


def cpu_description() -> str:
    """'<lscpu model name>, AMX yes/no, AVX512-BF16 yes/no, N cores': which CPU a table came from."""
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    amx = torch.cpu._is_amx_tile_supported()
    bf16 = torch.cpu._is_avx512_bf16_supported()
    yes = {True: "yes", False: "no"}
    return f"{model}, AMX {yes[amx]}, AVX512-BF16 {yes[bf16]}, {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------- the petseg legs
def train_command(root: str, size: int, batch_size: int, run_dir: Path, *overrides: str) -> list[str]:
    """``python src/train.py`` on resnet34_unet at ``size`` px on ``root``, not exporting anything."""
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "model=resnet34_unet",
        f"data.root={root}",
        "data.allow_missing=true",
        f"data.image_size={size}",
        f"data.batch_size={batch_size}",
        "trainer.checkpoint.export_dir=null",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def petseg_command(args: argparse.Namespace, leg: str, run_dir: Path) -> list[str]:
    fp32 = ["trainer.amp=off", "trainer.channels_last=false"] if leg == "petseg_fp32" else []
    return train_command(
        args.root,
        args.size,
        args.batch_size,
        run_dir,
        f"optim.lr={args.lr}",
        f"trainer.epochs={args.epochs}",
        f"trainer.seed={args.seed}",
        *fp32,
        *args.petseg_overrides,
    )


def val_dice_timeline(run_dir: Path) -> list[dict[str, float]]:
    """[{epoch, wall, val_dice}] from the run's TensorBoard events (wall: the event's time.time())."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, tuple[float, float]] = {}
    for file in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        if "val/dice" in acc.Tags().get("scalars", []):
            for event in acc.Scalars("val/dice"):
                points[event.step] = (event.wall_time, event.value)
    return [{"epoch": e, "wall": w, "val_dice": v} for e, (w, v) in sorted(points.items())]


def run_leg(args: argparse.Namespace, leg: str) -> list[dict[str, float]]:
    """Run one leg to its end (or until it reached the last target); its per-epoch timeline."""
    run_dir = args.out / leg
    log = (args.out / f"{leg}.log").open("w")
    if leg == "plain":
        cmd = [sys.executable, __file__, "--_plain", *sys.argv[1:]]
        timeline_file = args.out / "plain_timeline.jsonl"
        timeline_file.unlink(missing_ok=True)
    else:
        cmd = petseg_command(args, leg, run_dir)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    stop_early = leg not in args.full
    timeline: list[dict[str, float]] = []
    while proc.poll() is None:
        time.sleep(5)
        timeline = read_plain(timeline_file) if leg == "plain" else _safe_timeline(run_dir)
        if stop_early and any(p["val_dice"] >= max(args.targets) for p in timeline):
            proc.terminate()
            proc.wait(60)
            break
    timeline = read_plain(timeline_file) if leg == "plain" else _safe_timeline(run_dir)
    if proc.returncode not in (0, None) and not timeline:
        raise SystemExit(f"leg {leg} failed (exit {proc.returncode}); see {log.name}")
    for point in timeline:
        point["minutes"] = (point["wall"] - start) / 60
    return timeline


def _safe_timeline(run_dir: Path) -> list[dict[str, float]]:
    try:
        return val_dice_timeline(run_dir)
    except Exception:  # an event file being written: read it again next poll
        return []


def read_plain(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ the plain loop
def plain_loop(args: argparse.Namespace) -> None:
    """The loop a user would write: fp32, default layout, torch.optim.AdamW, PIL decoding in workers."""
    import albumentations as A
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from evaluate import ReferenceTargets, evaluate
    from models import build_model
    from oxford_pet import present_names, split_names
    from petseg.build import build_loss
    from petseg.runtime import Runtime
    from petseg.transforms import build_transform

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    root = Path(args.root)
    present = present_names(root)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    aug = OmegaConf.load(ROOT / "configs" / "aug" / "default.yaml")

    def load_mask(name: str) -> np.ndarray:
        trimap = np.array(Image.open(root / "annotations" / "trimaps" / f"{name}.png"))
        return ((trimap == 1) | (trimap == 3)).astype(np.uint8)

    class PetFiles(Dataset):
        def __init__(self, split: str, transform: A.Compose) -> None:
            self.names = [n for n in split_names(root, split) if n in present]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.names)

        def __getitem__(self, i: int) -> dict[str, Any]:
            name = self.names[i]
            image = np.array(Image.open(root / "images" / f"{name}.jpg").convert("RGB"))
            out = self.transform(image=image, mask=load_mask(name))
            x = (out["image"].astype(np.float32) / 255 - mean) / std
            return {
                "image": torch.from_numpy(x.transpose(2, 0, 1).copy()),
                "mask": torch.from_numpy(out["mask"][None].astype(np.float32)),
                "name": name,
            }

    train = PetFiles("train", build_transform(aug, args.size, train=True))
    valid = PetFiles("valid", build_transform(aug, args.size, train=False))
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=2, generator=generator
    )
    valid_loader = DataLoader(valid, batch_size=args.batch_size, num_workers=2)
    model = build_model("resnet34_unet")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = len(train_loader) * args.epochs
    warmup = len(train_loader)  # configs/sched/cosine.yaml: 1 warm-up epoch, cosine to 1 % of lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loss_fn = build_loss(OmegaConf.load(ROOT / "configs" / "loss" / "bce_dice.yaml"))
    cpu = Runtime(torch.device("cpu"))
    targets = ReferenceTargets(load_mask)
    out = args.out / "plain_timeline.jsonl"
    for epoch in range(args.epochs):
        model.train()
        for index, batch in enumerate(train_loader):
            if args.limit_batches is not None and index >= args.limit_batches:
                return  # benchmarks/seconds_per_batch.py: training steps only
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
        metrics = evaluate(model, valid_loader, cpu, progress=False, targets=targets)
        with out.open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "wall": time.time(), "val_dice": metrics["dice"]}) + "\n")


# -------------------------------------------------------------------------------------------- report
def first_reach(timeline: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in timeline if p["val_dice"] >= target), None)


def report(args: argparse.Namespace, timelines: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        f"**{cpu_description()}**; torch {__import__('torch').__version__}; resnet34_unet, "
        f"{args.size} px, batch {args.batch_size}, lr {args.lr}, {args.epochs} epochs max, seed {args.seed}",
        "",
        "| leg | "
        + " | ".join(f"min to {t:.2f}" for t in args.targets)
        + " | best val Dice (epoch) | epochs run |",
        "|---|" + "---:|" * (len(args.targets) + 2),
    ]
    for leg, timeline in timelines.items():
        cells = []
        for t in args.targets:
            hit = first_reach(timeline, t)
            cells.append(f"{hit['minutes']:.1f} (ep {hit['epoch']})" if hit else "not reached")
        best = max(timeline, key=lambda p: p["val_dice"]) if timeline else None
        best_cell = f"{best['val_dice']:.4f} ({best['epoch']})" if best else "-"
        lines.append(f"| {leg} | " + " | ".join(cells) + f" | {best_cell} | {len(timeline)} |")
    if "petseg" in timelines and "plain" in timelines:
        ratios = []
        for t in args.targets:
            a, b = first_reach(timelines["petseg"], t), first_reach(timelines["plain"], t)
            ratios.append(f"{b['minutes'] / a['minutes']:.2f}x" if a and b else "n/a")
        lines += [
            "",
            "petseg faster than plain by: "
            + ", ".join(f"{r} to {t:.2f}" for r, t in zip(ratios, args.targets, strict=True)),
        ]
    if (
        "petseg" in timelines
        and "petseg_fp32" in timelines
        and timelines["petseg"]
        and timelines["petseg_fp32"]
    ):
        a, b = timelines["petseg"][-1], timelines["petseg_fp32"][-1]
        lines += [
            "",
            f"parity: final val Dice {a['val_dice']:.4f} (default) vs {b['val_dice']:.4f} (fp32), "
            f"difference {a['val_dice'] - b['val_dice']:+.4f}",
        ]
    return "\n".join(lines)


def plot(timelines: dict[str, list[dict[str, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for leg, timeline in timelines.items():
        ax1.plot([p["minutes"] for p in timeline], [p["val_dice"] for p in timeline], marker="o", label=leg)
        ax2.plot([p["epoch"] for p in timeline], [p["val_dice"] for p in timeline], marker="o", label=leg)
    ax1.set(xlabel="wall-clock minutes", ylabel="val Dice (dice_256)", title="time to Dice")
    ax2.set(xlabel="epoch", ylabel="val Dice (dice_256)", title="per epoch (parity)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "time_to_dice")
    parser.add_argument("--legs", nargs="+", default=["petseg", "plain"], choices=LEGS)
    parser.add_argument("--full", nargs="*", default=[], choices=LEGS, help="legs that run all epochs")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.80, 0.85])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--petseg-overrides", nargs="*", default=[], help="extra train.py overrides")
    parser.add_argument("--_plain", dest="plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limit-batches", type=int, help=argparse.SUPPRESS)  # plain loop: N steps, no eval
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.root = str(Path(args.root).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plain:
        plain_loop(args)
        return 0
    timelines = {}
    for leg in args.legs:
        print(f"running {leg} ...", flush=True)
        timelines[leg] = run_leg(args, leg)
        print(json.dumps({"leg": leg, "timeline": timelines[leg]}), flush=True)
    text = report(args, timelines)
    (args.out / "time_to_dice.md").write_text(text + "\n")
    (args.out / "time_to_dice.json").write_text(json.dumps(timelines, indent=1) + "\n")
    plot(timelines, args.out / "time_to_dice.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
