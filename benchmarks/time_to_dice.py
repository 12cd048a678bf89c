"""Time to a Dice: wall-clock minutes from a training process's start until its validation Dice (the
reference protocol, ``dice_256``) first reaches each of ``--targets``, for the real ``src/train.py``
recipes and a plain PyTorch loop written the way a user would; then the test score of each leg's
``best.pth`` by ``src/evaluate.py``.

Legs (``--legs``), each in its own process, one after the other, each in ``<--out>/<leg>/``:

* ``experiment=<name>``: ``python src/train.py experiment=<name> data.root=<root> data.allow_missing=true
  trainer.checkpoint.export_dir=null hydra.run.dir=<leg dir>`` plus ``--overrides`` and the leg's own
  overrides: a leg may be quoted with train.py overrides after its name, e.g.
  ``"experiment=cpu_resnet34_unet trainer.amp=off trainer.channels_last=false"``. The recipes are
  configs/experiment/*.yaml (``cpu_resnet34_unet``, ``cpu_unet``, ...). Its val Dice per epoch is read
  from the run's TensorBoard log (tag ``val/dice``), with the event's wall time.
* ``plain``: this file's ``plain_loop`` on resnet34_unet with the ``cpu_resnet34_unet`` recipe's size,
  batch, lr, weight decay, warm-up and epochs: fp32, default memory format, ``torch.optim.AdamW``, a
  Dataset that decodes with PIL and applies the same albumentations pipeline in 2 DataLoader workers,
  shuffled by a seeded generator; the same network, loss (BCE + Dice), grad clipping (1.0), warm-up +
  cosine schedule per step and seed. It is scored every epoch with the project's ``evaluate()`` in fp32
  (the same protocol) and saves ``best.pth`` in the checkpoint format evaluate.py reads.

``--epochs``, ``--size``, ``--batch-size``, ``--lr``, ``--seed`` and ``--limit-batches`` (train and
validation batches per epoch: smoke runs) apply to every leg when given; otherwise each recipe keeps its
own values. Minutes count from the leg's process start (interpreter, imports, dataset scan and cache
build included). A leg stops once it has reached the last target unless it is named in ``--full``
(``--full`` alone: every leg). After a leg, ``src/evaluate.py checkpoint=<leg dir>/best.pth split=test``
scores it (``--no-test``: skip); its JSON goes to ``<leg dir>/best_test_metrics.json``. Results: a
Markdown table (``time_to_dice.md``), ``time_to_dice.json``, a plot of val Dice against minutes
(``time_to_dice.png``, if matplotlib is importable) under ``--out``, and one JSON line per leg.

    .venv/bin/python benchmarks/time_to_dice.py --root ../shared/data/oxford-iiit-pet \\
        --legs experiment=cpu_resnet34_unet experiment=cpu_unet plain
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PLAIN = "plain"
PLAIN_RECIPE = "cpu_resnet34_unet"  # the plain loop: resnet34_unet with the 50-epoch recipe's settings
PLAIN_WORKERS = 2
DEFAULT_TARGETS = (0.85, 0.88, 0.90)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    """lscpu's model name (else /proc/cpuinfo's, else platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """'<lscpu model name>, <AMX | AVX512-BF16, no AMX | AVX-512 without BF16 | AVX2-only>, N cores':
    which CPU a table came from, and whether it has the bf16 units trainer.amp=auto uses."""
    import torch

    amx = torch.cpu._is_amx_tile_supported()
    bf16 = torch.cpu._is_avx512_bf16_supported()
    flags = _cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    if amx:
        units = "AMX" + (" + AVX512-BF16" if bf16 else "")
    elif bf16:
        units = "AVX512-BF16, no AMX"
    elif "avx512f" in flags or capability.startswith("AVX512"):
        units = "AVX-512 without BF16, no AMX"
    elif "avx2" in flags or capability == "AVX2":
        units = "AVX2-only (no AVX-512, no AMX)"
    else:
        units = "no AVX2"
    return f"{_cpu_model()}, {units}, {os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------ the legs
@dataclass(frozen=True)
class Leg:
    """One ``--legs`` entry: ``plain`` or ``experiment=<name>`` followed by its own train.py overrides."""

    spec: str
    experiment: str | None  # None: the plain loop
    overrides: tuple[str, ...] = ()
    slug: str = ""  # its folder name under --out


def parse_leg(spec: str) -> Leg:
    words = spec.split()
    if not words:
        raise ValueError("empty leg")
    head, rest = words[0], tuple(words[1:])
    if head == PLAIN:
        if rest:
            raise ValueError(f"leg {spec!r}: the plain leg takes no train.py overrides")
        return Leg(spec, None, (), PLAIN)
    if not head.startswith("experiment=") or not head.split("=", 1)[1]:
        raise ValueError(f"leg {spec!r}: use 'plain' or 'experiment=<name> [train.py overrides]'")
    name = head.split("=", 1)[1]
    if not (ROOT / "configs" / "experiment" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
        raise ValueError(f"leg {spec!r}: no configs/experiment/{name}.yaml (known: {', '.join(known)})")
    slug = "_".join([name, *(re.sub(r"[^A-Za-z0-9._-]+", "-", o) for o in rest)])
    return Leg(spec, name, rest, slug)


def parse_legs(specs: list[str]) -> list[Leg]:
    legs, seen = [], {}
    for spec in specs:
        leg = parse_leg(spec)
        seen[leg.slug] = seen.get(leg.slug, 0) + 1
        if seen[leg.slug] > 1:  # the same leg twice: a folder each
            leg = Leg(leg.spec, leg.experiment, leg.overrides, f"{leg.slug}_{seen[leg.slug]}")
        legs.append(leg)
    return legs


def train_command(root: str, size: int, batch_size: int, run_dir: Path, *overrides: str) -> list[str]:
    """``python src/train.py`` on resnet34_unet at ``size`` px on ``root``, not exporting anything
    (benchmarks/seconds_per_batch.py's rows)."""
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


def experiment_command(root: str, experiment: str, run_dir: Path, *overrides: str) -> list[str]:
    """``python src/train.py experiment=<experiment>`` on ``root`` in ``run_dir``, not exporting anything."""
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        f"experiment={experiment}",
        f"data.root={root}",
        "data.allow_missing=true",
        "trainer.checkpoint.export_dir=null",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def common_overrides(args: argparse.Namespace) -> list[str]:
    """The train.py overrides every experiment leg gets from the command line's shared options."""
    out = []
    for option, key in (
        ("epochs", "trainer.epochs"),
        ("size", "data.image_size"),
        ("batch_size", "data.batch_size"),
        ("lr", "optim.lr"),
        ("seed", "trainer.seed"),
        ("limit_batches", "trainer.limit_train_batches"),
        ("limit_batches", "trainer.limit_val_batches"),
    ):
        value = getattr(args, option)
        if value is not None:
            out.append(f"{key}={value}")
    return [*out, *args.overrides]


def plain_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop's settings: the PLAIN_RECIPE's, with the shared options that were given."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.load(ROOT / "configs" / "experiment" / f"{PLAIN_RECIPE}.yaml")
    return {
        "model": "resnet34_unet",
        "size": args.size or int(recipe.data.image_size),
        "batch_size": args.batch_size or int(recipe.data.batch_size),
        "lr": args.lr or float(recipe.optim.lr),
        "weight_decay": float(recipe.optim.weight_decay),
        "warmup_epochs": int(recipe.sched.warmup_epochs),
        "epochs": args.epochs or int(recipe.trainer.epochs),
        "seed": 42 if args.seed is None else args.seed,
    }


def plain_command(args: argparse.Namespace, leg_dir: Path) -> list[str]:
    shared = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("epochs", "size", "batch_size", "lr", "seed")
        if getattr(args, name) is not None
    ]
    limit = [f"--_epoch-batches={args.limit_batches}"] if args.limit_batches is not None else []
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_plain",
        "--_checkpoint",
        f"--root={args.root}",
        f"--out={leg_dir}",
        *shared,
        *limit,
    ]


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


def _safe_timeline(run_dir: Path) -> list[dict[str, float]]:
    try:
        return val_dice_timeline(run_dir)
    except Exception:  # an event file being written: read it again next poll
        return []


def read_plain(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return points


def leg_timeline(leg: Leg, leg_dir: Path) -> list[dict[str, float]]:
    if leg.experiment is None:
        return read_plain(leg_dir / "plain_timeline.jsonl")
    return _safe_timeline(leg_dir)


@dataclass
class LegResult:
    leg: Leg
    leg_dir: Path
    timeline: list[dict[str, float]] = field(default_factory=list)
    minutes_run: float = 0.0
    returncode: int | None = None
    stopped_early: bool = False
    recipe: str = ""
    test: dict[str, Any] | None = None
    test_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.returncode not in (0, None) and not self.stopped_early

    def as_json(self) -> dict[str, Any]:
        return {
            "leg": self.leg.spec,
            "dir": str(self.leg_dir),
            "recipe": self.recipe,
            "returncode": self.returncode,
            "stopped_early": self.stopped_early,
            "minutes_run": self.minutes_run,
            "timeline": self.timeline,
            "test": self.test,
            "test_error": self.test_error,
        }


def run_leg(args: argparse.Namespace, leg: Leg) -> LegResult:
    """Run one leg to its end (or until it reached the last target), then score its best.pth on test."""
    leg_dir = args.out / leg.slug
    if leg_dir.exists():  # a previous run's event files would mix into this one's timeline
        shutil.rmtree(leg_dir)
    leg_dir.mkdir(parents=True)
    if leg.experiment is None:
        cmd = plain_command(args, leg_dir)
    else:
        cmd = experiment_command(args.root, leg.experiment, leg_dir, *common_overrides(args), *leg.overrides)
    result = LegResult(leg, leg_dir)
    log_path = args.out / f"{leg.slug}.log"
    stop_early = leg.spec not in args.full and leg.slug not in args.full and not args.full_all
    with log_path.open("w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    proc.wait(timeout=args.poll)
                    break
                except subprocess.TimeoutExpired:
                    pass
                timeline = leg_timeline(leg, leg_dir)
                if stop_early and any(p["val_dice"] >= max(args.targets) for p in timeline):
                    result.stopped_early = True
                    proc.terminate()  # train.py saves last.pth and exits; best.pth is already there
                    try:
                        proc.wait(120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    break
        finally:
            if proc.poll() is None:  # this script interrupted: never leave a training run behind
                proc.terminate()
                proc.wait()
        result.minutes_run = (time.time() - start) / 60
    result.returncode = proc.returncode
    result.timeline = leg_timeline(leg, leg_dir)
    for point in result.timeline:
        point["minutes"] = (point["wall"] - start) / 60
    result.recipe = describe_recipe(leg, leg_dir, args)
    if not args.no_test and not result.failed:
        score_on_test(args, result, log_path)
    return result


def describe_recipe(leg: Leg, leg_dir: Path, args: argparse.Namespace) -> str:
    """'model, S px, batch B, E epochs, precision' of the run (its .hydra/config.yaml and best.pth)."""
    if leg.experiment is None:
        s = plain_settings(args)
        return f"{s['model']}, {s['size']} px, batch {s['batch_size']}, {_epochs(s['epochs'])}, fp32"
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(leg_dir / ".hydra" / "config.yaml")
        text = (
            f"{cfg.model.name}, {cfg.data.image_size} px, batch {cfg.data.batch_size}, "
            f"{_epochs(int(cfg.trainer.epochs))}"
        )
    except Exception:  # no config written (the run failed at once)
        return "-"
    best = leg_dir / "best.pth"
    if best.is_file():
        try:
            from petseg.checkpoint import load_checkpoint

            runtime = load_checkpoint(best, mmap=True).get("runtime") or {}
            text += f", {runtime.get('amp', '?')}" + (
                " + channels_last" if runtime.get("channels_last") else ""
            )
        except Exception:
            pass
    return text


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def score_on_test(args: argparse.Namespace, result: LegResult, log_path: Path) -> None:
    """``src/evaluate.py checkpoint=<leg dir>/best.pth split=test``; its JSON into result.test."""
    best = result.leg_dir / "best.pth"
    if not best.is_file():
        result.test_error = "no best.pth"
        return
    output = result.leg_dir / "best_test_metrics.json"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "evaluate.py"),
        f"checkpoint={best}",
        "split=test",
        f"data.root={args.root}",
        "data.allow_missing=true",
        f"output={output}",
        *args.eval_overrides,
    ]
    with log_path.open("a") as log:
        log.write("\n" + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not output.is_file():
        result.test_error = f"evaluate.py exited {proc.returncode} (see {log_path.name})"
        return
    result.test = json.loads(output.read_text())


# ------------------------------------------------------------------------------------ the plain loop
class _AsIs:
    """evaluate()'s model input for the plain loop's batches, which its Dataset already normalised."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def __call__(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        return batch["image"], batch["mask"]


def plain_loop(args: argparse.Namespace) -> None:
    """The loop a user would write: fp32, default layout, torch.optim.AdamW, PIL decoding in workers.

    ``--limit-batches N``: N training steps, then return without evaluating (seconds_per_batch.py).
    """
    import albumentations as A
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from models import build_model
    from oxford_pet import present_names, split_names
    from petseg.build import build_loss
    from petseg.checkpoint import save_checkpoint
    from petseg.evaluation import ReferenceTargets, evaluate
    from petseg.runtime import Runtime
    from petseg.transforms import build_transform

    s = plain_settings(args)
    torch.manual_seed(s["seed"])
    np.random.seed(s["seed"])
    root = Path(args.root)
    present = present_names(root)
    data_cfg = OmegaConf.load(ROOT / "configs" / "data" / "oxford_pet.yaml")
    mean = np.array(list(data_cfg.mean), dtype=np.float32)
    std = np.array(list(data_cfg.std), dtype=np.float32)
    aug = OmegaConf.load(ROOT / "configs" / "aug" / "default.yaml")
    model_cfg = OmegaConf.to_container(
        OmegaConf.load(ROOT / "configs" / "model" / f"{s['model']}.yaml"), resolve=True
    )
    assert isinstance(model_cfg, dict)

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

    size, batch_size = s["size"], s["batch_size"]
    train = PetFiles("train", build_transform(aug, size, train=True))
    valid = PetFiles("valid", build_transform(aug, size, train=False))
    generator = torch.Generator().manual_seed(s["seed"])
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=PLAIN_WORKERS,
        generator=generator,
    )
    valid_loader = DataLoader(valid, batch_size=batch_size, num_workers=PLAIN_WORKERS)
    model = build_model(model_cfg["name"], **{k: v for k, v in model_cfg.items() if k != "name"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    per_epoch = len(train_loader)
    if args.epoch_batches is not None:
        per_epoch = min(per_epoch, args.epoch_batches)
    steps = per_epoch * s["epochs"]
    warmup = per_epoch * s["warmup_epochs"]  # configs/sched/cosine.yaml: warm-up, cosine to 1 % of lr

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
    best = -1.0
    for epoch in range(s["epochs"]):
        model.train()
        for index, batch in enumerate(train_loader):
            if args.limit_batches is not None and index >= args.limit_batches:
                return  # benchmarks/seconds_per_batch.py: training steps only
            if index >= per_epoch:
                break
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
        metrics = evaluate(
            model,
            valid_loader,
            _AsIs(cpu),
            progress=False,
            targets=targets,
            limit_batches=args.epoch_batches,
        )
        dice = float(metrics["dice"])
        if args.checkpoint and dice > best:  # before the timeline line: a stopped leg has its best.pth
            best = dice
            config = {
                "model": model_cfg,
                "data": OmegaConf.to_container(data_cfg)
                | {
                    "root": str(root),
                    "image_size": size,
                    "batch_size": batch_size,
                    "allow_missing": True,
                    "cache": False,
                    "num_workers": PLAIN_WORKERS,
                },
                "aug": OmegaConf.to_container(aug),
                "trainer": {"amp": "off", "channels_last": False, "seed": s["seed"], "epochs": s["epochs"]},
            }
            save_checkpoint(
                args.out / "best.pth",
                {
                    "model": model.state_dict(),
                    "config": config,
                    "epoch": epoch + 1,
                    "best": {"metric": dice, "epoch": epoch + 1},
                    "runtime": cpu.describe(),
                },
            )
        with out.open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "wall": time.time(), "val_dice": dice}) + "\n")


# -------------------------------------------------------------------------------------------- report
def first_reach(timeline: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in timeline if p["val_dice"] >= target), None)


def report(args: argparse.Namespace, results: list[LegResult]) -> str:
    import torch

    lines = [
        f"**{cpu_description()}**; torch {torch.__version__}; data {args.root}; minutes from each "
        "training process's start to the first epoch whose val `dice_256` reaches the target; test "
        "`dice_256` of the leg's best.pth (src/evaluate.py split=test)",
        "",
        "| leg | recipe | "
        + " | ".join(f"min to {t:.2f}" for t in args.targets)
        + " | best val Dice (epoch) | epochs run | minutes run | test dice_256 (n) |",
        "|---|---|" + "---:|" * (len(args.targets) + 4),
    ]
    for r in results:
        cells = []
        for t in args.targets:
            hit = first_reach(r.timeline, t)
            cells.append(f"{hit['minutes']:.1f} (ep {hit['epoch']})" if hit else "not reached")
        best = max(r.timeline, key=lambda p: p["val_dice"]) if r.timeline else None
        best_cell = f"{best['val_dice']:.4f} ({best['epoch']})" if best else "-"
        if r.test is not None:
            test_cell = f"{r.test['dice_256']['mean']:.4f} ({r.test['n']})"
        else:
            test_cell = r.test_error or "-"
        status = " (stopped at the last target)" if r.stopped_early else ""
        if r.failed:
            status = f" (failed: exit {r.returncode}, see {r.leg.slug}.log)"
        lines.append(
            f"| `{r.leg.spec}`{status} | {r.recipe} | "
            + " | ".join(cells)
            + f" | {best_cell} | {len(r.timeline)} | {r.minutes_run:.1f} | {test_cell} |"
        )
    plain = next((r for r in results if r.leg.experiment is None), None)
    if plain is not None:
        for r in results:
            if r is plain:
                continue
            ratios = []
            for t in args.targets:
                a, b = first_reach(r.timeline, t), first_reach(plain.timeline, t)
                ratios.append(f"{b['minutes'] / a['minutes']:.2f}x" if a and b else "n/a")
            lines += [
                "",
                f"`{r.leg.spec}` vs plain (plain's minutes / this leg's): "
                + ", ".join(f"{x} to {t:.2f}" for x, t in zip(ratios, args.targets, strict=True)),
            ]
    return "\n".join(lines)


def plot(results: list[LegResult], targets: list[float], out: Path) -> Path | None:
    """val Dice against minutes, every leg on one plot; None (and a line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        print(f"no plot: matplotlib is not importable ({err})")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot(
            [p["minutes"] for p in r.timeline],
            [p["val_dice"] for p in r.timeline],
            marker="o",
            label=r.leg.spec,
        )
    for t in targets:
        ax.axhline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="wall-clock minutes from process start", ylabel="val Dice (dice_256)", title="time to Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset root (official layout)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "time_to_dice")
    parser.add_argument(
        "--legs",
        nargs="+",
        default=[f"experiment={PLAIN_RECIPE}", "experiment=cpu_resnet34_unet_fast", PLAIN],
        help="plain, or experiment=<name> [train.py overrides] (quoted, space-separated)",
    )
    parser.add_argument(
        "--full", nargs="*", help="legs (as in --legs) that run all epochs; --full alone: every leg"
    )
    parser.add_argument("--targets", nargs="+", type=float, default=list(DEFAULT_TARGETS))
    parser.add_argument("--epochs", type=int, help="every leg's epochs (default: each recipe's)")
    parser.add_argument("--size", type=int, help="every leg's data.image_size (default: each recipe's)")
    parser.add_argument("--batch-size", type=int, help="every leg's data.batch_size (default: each recipe's)")
    parser.add_argument("--lr", type=float, help="every leg's optim.lr (default: each recipe's)")
    parser.add_argument("--seed", type=int, help="every leg's seed (default: trainer.seed, 42)")
    parser.add_argument(
        "--limit-batches",
        type=int,
        help="train and validation batches per epoch for every leg (smoke runs); with the internal "
        "--_plain (benchmarks/seconds_per_batch.py): that many training steps, no evaluation",
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="extra train.py overrides for every experiment leg"
    )
    parser.add_argument(
        "--eval-overrides",
        nargs="*",
        default=[],
        help="extra src/evaluate.py overrides (e.g. data.num_workers=0)",
    )
    parser.add_argument("--no-test", action="store_true", help="do not score best.pth on the test split")
    parser.add_argument(
        "--poll", type=float, default=5.0, help="seconds between reads of a running leg's log"
    )
    parser.add_argument("--_plain", dest="plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_checkpoint", dest="checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_epoch-batches", dest="epoch_batches", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.root = str(Path(args.root).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plain:
        plain_loop(args)
        return 0
    try:
        legs = parse_legs(args.legs)
    except ValueError as err:
        parser.error(str(err))
    args.full_all = args.full is not None and not args.full
    args.full = args.full or []
    unknown = [f for f in args.full if f not in {leg.spec for leg in legs} | {leg.slug for leg in legs}]
    if unknown:
        parser.error(f"--full names legs not in --legs: {', '.join(unknown)}")
    print(cpu_description(), flush=True)
    results = []
    for leg in legs:
        print(f"running {leg.spec} in {args.out / leg.slug} (log {args.out / leg.slug}.log) ...", flush=True)
        result = run_leg(args, leg)
        results.append(result)
        print(json.dumps(result.as_json()), flush=True)
    text = report(args, results)
    (args.out / "time_to_dice.md").write_text(text + "\n")
    (args.out / "time_to_dice.json").write_text(json.dumps([r.as_json() for r in results], indent=1) + "\n")
    picture = plot(results, args.targets, args.out / "time_to_dice.png")
    print(text)
    print(
        f"\nwritten: {args.out / 'time_to_dice.md'}, {args.out / 'time_to_dice.json'}"
        + (f", {picture}" if picture else "")
    )
    failed = [r.leg.spec for r in results if r.failed]
    if failed:
        print(f"failed legs: {', '.join(failed)} (see their logs under {args.out})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
