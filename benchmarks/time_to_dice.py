"""Time to a Dice: wall-clock minutes from a training process's start until its validation Dice (the
reference protocol, ``dice_256``) first reaches each of ``--targets``, for the real ``src/train.py``
recipes and a plain PyTorch loop written the way a user would; then the test score of each leg's
``best.pth`` by ``src/evaluate.py``.

Legs (``--legs``), each in its own process, one after the other, each in ``<--out>/<leg>/``:

* ``experiment=<name>``: ``python src/train.py data.root=<root> data.allow_missing=true
  trainer.checkpoint.export_dir=null hydra.run.dir=<leg dir> experiment=<name>`` plus ``--overrides``
  and the leg's own overrides: a leg may be quoted with train.py overrides after its name, e.g.
  ``"experiment=cpu_resnet34_unet trainer.amp=off trainer.channels_last=false"``. The recipes are
  configs/experiment/*.yaml (``cpu_resnet34_unet``, ``cpu_resnet34_unet_50ep``, ``cpu_unet``, ...).
  Its val Dice per epoch is read from the run's TensorBoard log (tag ``val/dice``), with the event's
  wall time.
* ``plain``: benchmarks/plain.py's ``plain_loop`` (in a process of this file with ``--_plain``) on
  resnet34_unet with the ``cpu_resnet34_unet_50ep`` recipe's size, batch, lr, weight decay, warm-up and
  epochs: fp32, default memory format, ``torch.optim.AdamW``, a Dataset (``plain.PlainPetFiles``) that
  decodes with PIL and applies the same albumentations pipeline in 2 DataLoader workers, shuffled by a
  seeded generator; the same network, loss (BCE + Dice), grad clipping (1.0), warm-up + cosine schedule
  per step and seed. It is scored every epoch with the project's ``evaluate()`` in fp32 (the same
  protocol) and saves ``best.pth`` in the checkpoint format evaluate.py reads.

``--epochs``, ``--size``, ``--batch-size``, ``--lr``, ``--seed`` and ``--limit-batches`` (train and
validation batches per epoch: smoke runs) apply to every leg when given; otherwise each recipe keeps its
own values. Minutes count from the leg's process start (interpreter, imports, dataset scan and cache
build included). A leg stops once it has reached the last target unless it is named in ``--full``
(``--full`` alone: every leg). After a leg, ``src/evaluate.py checkpoint=<leg dir>/best.pth split=test``
scores it (``--no-test``: skip); its JSON goes to ``<leg dir>/best_test_metrics.json``. Results: a
Markdown table (``time_to_dice.md``), ``time_to_dice.json``, a plot of val Dice against minutes
(``time_to_dice.png``, if matplotlib is importable) under ``--out``, and one JSON line per leg.

    .venv/bin/python benchmarks/time_to_dice.py --root ../shared/data/oxford-iiit-pet \\
        --legs experiment=cpu_resnet34_unet_50ep experiment=cpu_resnet34_unet plain
"""

from __future__ import annotations

import argparse
import json
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

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from petseg.checkpoint import load_checkpoint  # noqa: E402  (src/ on sys.path first)
from petseg.tb import read_events  # noqa: E402
from plain import PLAIN_RECIPE, plain_loop, plain_settings  # noqa: E402
from timing import cpu_description, train_command  # noqa: E402

PLAIN = "plain"
DEFAULT_TARGETS = (0.85, 0.88, 0.90)


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
    points = read_events(run_dir).get("val/dice", {})
    return [{"epoch": e, "wall": w, "val_dice": v} for e, (v, w) in sorted(points.items())]


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
        cmd = train_command(
            args.root, leg_dir, f"experiment={leg.experiment}", *common_overrides(args), *leg.overrides
        )
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


# -------------------------------------------------------------------------------------------- report
def first_reach(timeline: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in timeline if p["val_dice"] >= target), None)


def report(args: argparse.Namespace, results: list[LegResult]) -> str:
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
        default=[f"experiment={PLAIN_RECIPE}", "experiment=cpu_resnet34_unet", PLAIN],
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
