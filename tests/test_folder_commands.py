"""data=folder through the real commands: train.py on EM slices, then evaluate.py and inference.py from
the checkpoint alone (it remembers its data group), and bad folders as one error line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import DATA_DIR
from test_e2e import run
from test_folder_data import make_folder
from test_user_errors import run_train

EM_SAMPLE = DATA_DIR / "isbi2012-em-sample"


def em_overrides(tmp: Path) -> list[str]:
    """experiment=isbi_unet shrunk to seconds: the 6 sample slices (128 px), 64 px crops, width 4."""
    return [
        "experiment=isbi_unet",
        f"data.root={EM_SAMPLE}",
        "data.image_size=128",
        "data.crop=64",
        "data.repeat=2",
        "data.num_workers=0",
        f"data.cache_dir={tmp / 'cache'}",
        "data.split.ranges={train: [0, 4], valid: [4, 5], test: [5, 6]}",
        "model.base_width=4",
        "trainer.epochs=2",
        "trainer.threads=1",
        f"trainer.checkpoint.export_dir={tmp / 'saved'}",
    ]


@pytest.fixture(scope="module")
def em_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("em")
    run("train.py", *em_overrides(tmp), f"hydra.run.dir={tmp / 'run'}")
    return tmp


@pytest.mark.slow
def test_em_training_remembers_its_data_and_exports_by_name(em_run: Path):
    ckpt = torch.load(em_run / "run" / "best.pth", map_location="cpu", weights_only=False)
    data = ckpt["config"]["data"]
    assert data["name"] == "isbi2012_em" and data["channels"] == 1
    assert ckpt["config"]["model"]["in_channels"] == 1  # the model follows the data
    assert len(data["mean"]) == 1 and 0 < data["mean"][0] < 1  # computed from the train slices
    assert (em_run / "saved" / "isbi_unet.pth").is_file()  # trainer.checkpoint.export_name
    log = (em_run / "run" / "train.log").read_text()
    assert "dice_native" in log and "pixel error" in log  # the headline of folder data


@pytest.mark.slow
def test_evaluate_and_inference_need_no_data_keys(em_run: Path, tmp_path: Path):
    out = tmp_path / "m.json"
    done = run("evaluate.py", f"checkpoint={em_run / 'run' / 'best.pth'}", "split=test", f"output={out}")
    assert done.stdout.splitlines()[0].startswith("data: ") and "training root" in done.stdout.splitlines()[0]
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 1 and 0 <= metrics["dice_native"]["pixel_error"] <= 1
    pred = tmp_path / "pred"
    run("inference.py", f"checkpoint={em_run / 'run' / 'best.pth'}", "split=test", f"output={pred}")
    mask = np.asarray(Image.open(pred / "slice_05_mask.png"))
    assert mask.shape == (128, 128)  # at the slice's own size
    overlay = np.asarray(Image.open(pred / "slice_05_overlay.png"))
    assert overlay.shape == (128, 128, 3)  # grayscale shown as gray, tinted
    single = tmp_path / "one"
    run(
        "inference.py",
        f"checkpoint={em_run / 'run' / 'best.pth'}",
        f"input={EM_SAMPLE / 'images' / 'slice_00.png'}",
        f"output={single}",
    )
    assert np.asarray(Image.open(single / "slice_00_mask.png")).shape == (128, 128)


@pytest.mark.slow
def test_a_folder_of_other_names_and_sizes_trains(tmp_path: Path):
    """Any folder: RGB images of mixed formats and a size other than the training size."""
    root = make_folder(tmp_path / "d", n=12, size=(50, 70))
    run(
        "train.py",
        "data=folder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model.base_width=4",
        "trainer.epochs=1",
        "trainer.threads=1",
        "trainer.checkpoint.export_dir=null",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    out = tmp_path / "m.json"
    run(
        "evaluate.py",
        f"checkpoint={tmp_path / 'run' / 'best.pth'}",
        f"data.root={root}",
        "split=test",
        f"output={out}",
    )
    assert json.loads(out.read_text())["n"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data=folder"], "data.root is not set: data=folder needs data.root="),
        (["data=folder", "data.foreground=half"], "data.foreground='half': give a list of mask values"),
        (["data=folder", "data.channels=2"], "data.channels must be 1 or 3 or auto, got 2"),
        (
            ["data=folder", "model.in_channels=1", "data.channels=3"],
            "model.in_channels=1 but data.channels=3",
        ),
    ],
)
def test_bad_folder_settings_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
):
    """train.py's cli() in this process (the subprocess path of a user error: tests/test_user_errors.py)."""
    root = make_folder(tmp_path / "d", n=6)
    extra = [] if args == ["data=folder"] else [f"data.root={root}"]
    code, err = run_train([*args, *extra, "trainer.epochs=1"], tmp_path / "run", capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.mark.slow
def test_a_sweep_on_folder_data_is_summarised_and_plotted(tmp_path: Path):
    """-m over the EM sample, then sweep_summary.py and curves.py on its dir: the same commands as for
    pets, the headline the data's own (dice_native for folders)."""
    sweep = tmp_path / "sweep"
    run(
        "train.py",
        "-m",
        *em_overrides(tmp_path),
        "trainer.epochs=1",
        "optim.lr=1e-3,3e-3",
        f"hydra.sweep.dir={sweep}",
    )
    summary = run("sweep_summary.py", f"sweep_dir={sweep}").stdout
    assert summary.count("optim.lr=") >= 2 and "dice_native" in summary, summary
    out = tmp_path / "curves.png"
    run("curves.py", f"runs={sweep}", f"out={out}")
    assert out.stat().st_size > 0
