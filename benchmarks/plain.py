"""What our code is measured against: the plain train step a user would write, the plain loop and
Dataset around it, and the optional reference network, segmentation_models_pytorch's Unet(resnet34).

* ``plain_train_step``: the one plain step (zero_grad, forward, loss, backward, optional clipping,
  optimizer step), timed by models.py (every model's plain cost), train_speed.py (the smp rows) and
  run by ``plain_loop``.
* ``plain_loop``: time_to_dice.py's ``plain`` leg (also seconds_per_batch.py's ``plain`` row): fp32,
  default memory format, ``torch.optim.AdamW``, ``PlainPetFiles`` decoding with PIL in 2 DataLoader
  workers, on resnet34_unet with the ``cpu_resnet34_unet_50ep`` recipe's settings.
* ``import_smp`` / ``smp_unet`` / ``drop_unusable_smp``: the optional reference and the one message
  that says how to install it.

Imported by the scripts in this folder (they put src/ on sys.path first); it has no command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
# src/ first, even when it is already on sys.path further down: a script's own folder comes first, and
# its benchmarks/models.py would otherwise shadow src/models (the model registry).
if sys.path[:1] != [str(ROOT / "src")]:
    sys.path.insert(0, str(ROOT / "src"))

from models import build_model  # noqa: E402
from oxford_pet import present_names, split_names  # noqa: E402
from petseg.build import build_loss  # noqa: E402
from petseg.checkpoint import save_checkpoint  # noqa: E402
from petseg.evaluation import ReferenceTargets, evaluate  # noqa: E402
from petseg.runtime import Runtime  # noqa: E402
from petseg.transforms import build_transform  # noqa: E402

PLAIN_RECIPE = "cpu_resnet34_unet_50ep"  # the plain loop: resnet34_unet with the 50-epoch recipe's settings
PLAIN_WORKERS = 2
SMP = "smp_unet_resnet34"
# Word for word requirements-bench.txt's own instruction: a plain `pip install -r` swaps the pinned
# torch for a CUDA build (tests/test_bench_hint.py keeps the two equal).
INSTALL_COMMAND = ".venv/bin/pip install --no-deps -r requirements-bench.txt"


# ---------------------------------------------------------------------------------- the plain step
def plain_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    masks: torch.Tensor,
    clip: float | None = None,
    autocast: AbstractContextManager | None = None,
) -> torch.Tensor:
    """One optimisation step the way a user writes it: ``zero_grad(set_to_none=True)``, forward (under
    ``autocast`` if given), ``loss_fn`` on float32 logits, backward, gradient-norm clipping to ``clip``
    if given, ``optimizer.step()``. The caller puts the model in train mode. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast if autocast is not None else nullcontext():
        logits = model(images)
    loss = loss_fn(logits.float(), masks)  # .float(): a no-op in fp32, the loss in fp32 under autocast
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()


# -------------------------------------------------------------------------- the plain Dataset, loop
def load_mask(root: Path, name: str) -> np.ndarray:
    """The pet mask of ``name``: trimap 1 (pet) and 3 (border) -> 1, 2 (background) -> 0."""
    trimap = np.array(Image.open(root / "annotations" / "trimaps" / f"{name}.png"))
    return ((trimap == 1) | (trimap == 3)).astype(np.uint8)


class PlainPetFiles(Dataset):
    """The Dataset a user would write: the split's JPEG and trimap decoded with PIL on every access,
    ``transform`` (albumentations) at full resolution, then normalised float32 tensors."""

    def __init__(
        self,
        root: Path,
        split: str,
        transform: A.Compose,
        mean: np.ndarray,
        std: np.ndarray,
        present: set[str] | None = None,
    ) -> None:
        present = present_names(root) if present is None else present
        self.root, self.transform, self.mean, self.std = root, transform, mean, std
        self.names = [n for n in split_names(root, split) if n in present]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        image = np.array(Image.open(self.root / "images" / f"{name}.jpg").convert("RGB"))
        out = self.transform(image=image, mask=load_mask(self.root, name))
        x = (out["image"].astype(np.float32) / 255 - self.mean) / self.std
        return {
            "image": torch.from_numpy(x.transpose(2, 0, 1).copy()),
            "mask": torch.from_numpy(out["mask"][None].astype(np.float32)),
            "name": name,
        }


class _AsIs:
    """evaluate()'s model input for the plain loop's batches, which its Dataset already normalised."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def __call__(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        return batch["image"], batch["mask"]


def plain_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop's settings: the PLAIN_RECIPE's, with the shared options that were given
    (``args.size``, ``batch_size``, ``lr``, ``epochs``, ``seed``; None: the recipe's)."""
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


def plain_loop(args: argparse.Namespace) -> None:
    """The loop a user would write: fp32, default layout, torch.optim.AdamW, PIL decoding in workers;
    BCE + Dice, clipping at 1.0, warm-up + cosine per step. Scored every epoch by the project's
    ``evaluate()`` (fp32, the same protocol); one JSON line per epoch to ``<out>/plain_timeline.jsonl``
    and, with ``args.checkpoint``, ``<out>/best.pth`` in the format src/evaluate.py reads.

    ``args.limit_batches`` N: N training steps, then return without evaluating (seconds_per_batch.py);
    ``args.epoch_batches``: train and validation batches per epoch (smoke runs).
    """
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

    size, batch_size = s["size"], s["batch_size"]
    train = PlainPetFiles(root, "train", build_transform(aug, size, train=True), mean, std, present)
    valid = PlainPetFiles(root, "valid", build_transform(aug, size, train=False), mean, std, present)
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
    targets = ReferenceTargets(partial(load_mask, root))
    out = args.out / "plain_timeline.jsonl"
    best = -1.0
    for epoch in range(s["epochs"]):
        model.train()
        for index, batch in enumerate(train_loader):
            if args.limit_batches is not None and index >= args.limit_batches:
                return  # benchmarks/seconds_per_batch.py: training steps only
            if index >= per_epoch:
                break
            plain_train_step(model, optimizer, loss_fn, batch["image"], batch["mask"], clip=1.0)
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


# ------------------------------------------------------------------------- the optional reference
_SHIM: list[torch.library.Library] = []


def import_smp():  # -> module; untyped: smp is optional
    """segmentation_models_pytorch, importable beside a torchvision whose C extension cannot load.

    PyPI's torchvision is built against CUDA torch; beside torch +cpu its _C library fails to load and
    ``import torchvision`` then dies registering fake kernels for torchvision::nms/qnms, ops that were
    never defined (requirements-bench.txt). Declaring those two schemas first lets the pure-Python
    parts import; smp's ResNet encoder uses none of torchvision's ops, so the reference is unchanged.
    Nothing is done when torchvision loads normally.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
        loads = False
        for folder in spec.submodule_search_locations:
            for lib in Path(folder).glob("_C*.so"):
                try:
                    torch.ops.load_library(str(lib))
                    loads = True
                except (OSError, RuntimeError):
                    pass
        if not loads and not hasattr(torch.ops.torchvision, "nms"):
            _SHIM.append(torch.library.Library("torchvision", "DEF"))  # kept alive: ops live with it
            for op in ("nms", "qnms"):
                _SHIM[-1].define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import segmentation_models_pytorch  # optional: only here, so that the scripts run without it

    return segmentation_models_pytorch


def smp_unet() -> nn.Module:
    """The reference: smp.Unet with a ResNet-34 encoder, random init, 3 input channels, one output."""
    return import_smp().Unet(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1)


def smp_unavailable_reason() -> str | None:
    """Why the smp reference cannot run here, or None if it can. Any exception counts, not only
    ImportError: a torchvision built for another torch fails at import with RuntimeError."""
    try:
        import_smp()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def drop_unusable_smp(names: Iterable[str], smp_names: Iterable[str] = (SMP,)) -> list[str]:
    """``names`` without ``smp_names`` when smp cannot be imported here, after the one message that
    says so and how to install it; ``names`` as they are otherwise (or when none of them is smp)."""
    names, smp_names = list(names), set(smp_names)
    wanted = [n for n in names if n in smp_names]
    if wanted and (reason := smp_unavailable_reason()):
        print(f"skipping {', '.join(wanted)}: segmentation_models_pytorch not usable ({reason}).")
        print(f"  Install it with: {INSTALL_COMMAND} (see the comments there)")
        return [n for n in names if n not in smp_names]
    return names
