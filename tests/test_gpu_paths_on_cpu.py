"""The branches a GPU run takes, run on the CPU where torch allows it (issue 29): ``torch.compile`` in its
default mode through a real train step and checkpoint, channels_last training of each model against
the default layout, and the non-blocking copy of ModelInput. fp16 + GradScaler: tests/test_fp16_scaler.py.

What truly needs CUDA and is not run here: pinned host memory (``pin_memory`` needs an accelerator;
loaders.py turns it on only when CUDA is available), cuDNN benchmark, bf16/fp16 autocast on CUDA
kernels, NCCL DDP and SyncBatchNorm across GPUs. benchmarks/gpu_check.sh runs those on a lent GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_train, first_batch, params
from petseg.build import build, build_trainer
from petseg.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.usefixtures("torch_settings_restored")


@pytest.mark.slow
def test_a_compiled_model_trains_and_saves_the_bare_weights(tmp_path: Path) -> None:
    """trainer.compile=true: inductor compiles the step on CPU (needs a C++ compiler); the step moves
    the weights the checkpoint saves, and best.pth loads into a plain model with the same outputs."""
    cfg = compose_train(
        tmp_path,
        "model.base_width=4",
        "trainer.compile=true",
        "trainer.amp=off",
        "trainer.channels_last=false",
    )
    built = build(cfg)
    assert built.train_model is not built.model  # the compiled wrapper trains ...
    before = params(built.model)
    trainer = build_trainer(cfg, built, tmp_path / "run")
    loss_sum, _dice_sum, n = trainer.train_step(first_batch(built)).tolist()
    assert n > 0 and torch.isfinite(torch.tensor(loss_sum))
    assert not torch.equal(before, params(built.model))  # ... the parameters of the bare model
    path = trainer.save("best.pth", for_evaluation=True)
    ckpt = load_checkpoint(path)
    assert not any(key.startswith("_orig_mod.") for key in ckpt["model"])
    plain = model_from_checkpoint(ckpt).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), built.model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("model", ["unet", pytest.param("resnet34_unet", marks=pytest.mark.slow)])
def test_channels_last_training_steps_like_the_default_layout(tmp_path: Path, model: str) -> None:
    """One fp32 step of each model in channels_last (the CUDA and bf16-CPU default) and in the default
    layout, from the same weights and batch: the same loss, and weights that differ by no more than
    AdamW's first step can (2 lr, where a near-zero gradient's sign differs between the kernels)."""
    results = []
    for layout in ("true", "false"):
        torch.manual_seed(0)
        cfg = compose_train(
            tmp_path,
            f"model={model}",
            *(["model.base_width=4"] if model == "unet" else []),
            "trainer.amp=off",
            f"trainer.channels_last={layout}",
            "trainer.grad_clip=null",
        )
        built = build(cfg)
        assert built.runtime.channels_last is (layout == "true")
        trainer = build_trainer(cfg, built, tmp_path / f"run_{layout}")
        loss_sum = trainer.train_step(first_batch(built)).tolist()[0]
        results.append((loss_sum, params(built.model)))
    (loss_cl, weights_cl), (loss_default, weights_default) = results
    assert loss_cl == pytest.approx(loss_default, rel=1e-3)
    assert (weights_cl - weights_default).abs().max() <= 2.0 * cfg.optim.lr + 1e-6


def test_model_input_copies_non_blocking_and_keeps_the_values(tmp_path: Path) -> None:
    """ModelInput moves uint8 batches with non_blocking=True (asynchronous from pinned memory on CUDA;
    a plain copy on CPU): the float inputs are the batch's values, normalised, in the runtime's layout."""
    cfg = compose_train(tmp_path, "model.base_width=4", "trainer.amp=off", "trainer.channels_last=true")
    built = build(cfg)
    batch = first_batch(built)
    images, masks = built.model_input(batch)
    assert images.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(cfg.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, -1, 1, 1)
    expected = (batch["image"].float() / 255.0 - mean) / std
    assert torch.allclose(images, expected, atol=1e-5)
    assert torch.equal(masks, batch["mask"].float())


def test_rng_state_is_this_process_s_own_and_old_per_gpu_lists_still_restore() -> None:
    """capture_rng keeps the CUDA generator of this process's GPU only, and only once CUDA is in use
    (``get_rng_state_all`` would open a context on every visible GPU from every rank); a checkpoint
    of an earlier version, with one state per GPU, still restores."""
    from utils import capture_rng, restore_rng

    state = capture_rng()
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        assert "cuda" not in state
    expected = torch.rand(3)
    cuda = torch.cuda.is_available()
    gpu_state = torch.cuda.get_rng_state() if cuda else torch.zeros(16, dtype=torch.uint8)
    old_style = {**state, "cuda": [gpu_state]}
    restore_rng(old_style)  # on a machine without CUDA the GPU entry is left alone
    assert torch.equal(torch.rand(3), expected)
