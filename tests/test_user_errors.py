"""No user mistake ends in a stack trace: one line on stderr, exit code 2, before any work is done.

A few cases run the real commands as subprocesses (all at once, to keep the wall time down); the many
config cases call train.py's ``cli()`` in this process, which is the same code without the start-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import curves
import evaluate
import inference
import oxford_pet
import sweep_summary
import train
from conftest import tiny as tiny_recipe
from helpers import ROOT, SAMPLE
from models import build_model
from petseg import run as run_module
from petseg.checkpoint import load_checkpoint, save_checkpoint
from petseg.command_config import as_paths, load_cli_config
from petseg.paths import CONFIG_DIR

TEST_NAME = (SAMPLE / "annotations" / "test.txt").read_text().split()[0]  # a test image of the sample


def tiny(root: Path = SAMPLE) -> list[str]:
    """One epoch of the tiny recipe with a width-4 UNet on ``root``."""
    return tiny_recipe("model.base_width=4", f"data.root={root}", "trainer.epochs=1")


def leaky_root(tmp: Path) -> Path:
    """A copy of the sample whose trainval.txt also lists a test image."""
    root = Path(shutil.copytree(SAMPLE, tmp / "leaky"))
    lists = root / "annotations"
    with open(lists / "trainval.txt", "a") as fh:
        fh.write(f"{TEST_NAME} 1 1 1\n")
    return root


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error_line(stderr: str, *expected: str) -> str:
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------ real commands
@pytest.mark.slow
def test_real_commands_exit_2_with_one_line(tmp_path: Path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    (tmp_path / "in").mkdir()
    shutil.copy(SAMPLE / "images" / "Bengal_100.jpg", tmp_path / "in")
    nan_dir = tmp_path / "nan"
    cases = {
        "unknown group option": (
            ["train.py", *tiny(), "model=vit"],
            ["unknown model 'vit' (model=vit); valid: resnet34_unet, unet"],
        ),
        "unknown key": (
            ["train.py", *tiny(), "trainer.foo=1"],
            ["unknown key 'trainer.foo' (trainer.foo=1)"],
        ),
        "image size": (
            ["train.py", *tiny(), "data.image_size=40"],
            ["not a multiple of 16 for unet", "32 or 48"],
        ),
        "test leak": (["train.py", *tiny(leaky_root(tmp_path))], [TEST_NAME, "leak"]),
        "non-finite loss": (
            # An absurd lr without clipping: the weights explode in the first step, the loss is NaN next.
            [
                "train.py",
                *tiny(),
                "optim.lr=1e20",
                "trainer.grad_clip=null",
                "trainer.checkpoint.every_n_steps=1",
            ],
            ["loss became nan at epoch 1, step 2", f"last good checkpoint is {nan_dir / 'last.pth'}"],
        ),
        "evaluate junk": (
            ["evaluate.py", f"checkpoint={junk}", f"output={tmp_path / 'm.json'}"],
            [f"{junk} is not a petseg checkpoint"],
        ),
        "inference tensor": (
            [
                "inference.py",
                f"checkpoint={tensor_file}",
                f"input={tmp_path / 'in'}",
                f"output={tmp_path / 'o'}",
            ],
            [f"{tensor_file} is not a petseg checkpoint (it holds a Tensor, not a checkpoint dict)"],
        ),
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    running = {}
    for i, (case, (args, _)) in enumerate(cases.items()):
        script, *rest = args
        if script == "train.py":
            rest.append(f"hydra.run.dir={nan_dir if case == 'non-finite loss' else tmp_path / f'run{i}'}")
        running[case] = subprocess.Popen(
            [sys.executable, str(ROOT / "src" / script), *rest],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    for case, process in running.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 2, (case, stdout[-2000:], stderr[-2000:])
        assert "Traceback" not in stderr + stdout, case
        if case == "non-finite loss":
            # Progress bars share stderr; the error is its own last line.
            errors = [line.split("\r")[-1] for line in stderr.splitlines() if "error:" in line]
            assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-2000:]
            stderr = errors[0]
        assert_one_error_line(stderr, *cases[case][1])
    # The last good checkpoint is kept and holds only finite numbers.
    kept = load_checkpoint(nan_dir / "last.pth")
    assert kept["progress"]["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------ train.py in-process
def run_train(argv: list[str], run_dir: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """train.py's cli() here; Hydra's logging set-up is left out so it does not outlive the test."""
    code = train.cli(
        [*argv, f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    )
    return code, capsys.readouterr().err


CONFIG_MISTAKES = {
    "optim=adam": "unknown optimizer 'adam' (optim=adam); valid: adamw, sgd",
    "sched=step": "unknown schedule 'step' (sched=step); valid: cosine, linear, none, onecycle",
    "loss=focal": "unknown loss 'focal' (loss=focal); valid: bce, bce_dice, dice",
    "aug=heavy": "unknown augmentation 'heavy' (aug=heavy); valid: default, em, none, strong",
    "experiment=nope": (
        "unknown experiment 'nope' (experiment=nope); "
        "valid: cpu_resnet34_unet, cpu_resnet34_unet_50ep, cpu_unet, cpu_unet_36ep"
    ),
    "model.name=vit": "unknown model 'vit'; valid: resnet34_unet, unet",
    "optim._target_=torch.optim.Adamm": "optim: cannot build torch.optim.Adamm",
    "sched.min_lr_ratio=[1]": "sched: float() argument must be",
    "optim.betas=0.9": "optim: 'float' object is not iterable",
    "loss.bce_weight=-1": "loss: cannot build petseg.losses.SegmentationLoss: loss weights must be >= 0",
    "optim.lr=0": "optim.lr must be a positive float, got 0",
    "optim.lr=-1e-3": "optim.lr must be a positive float, got -0.001",
    "optim.lr=fast": "optim.lr must be a positive float, got 'fast'",
    "data.batch_size=0": "data.batch_size must be a positive int, got 0",
    "trainer.epochs=0": "trainer.epochs must be a positive int, got 0",
    "trainer.epochs=2.5": "trainer.epochs must be a positive int, got 2.5",
    "data.image_size=33": "image size 33x33 is not a multiple of 16 for unet; nearest valid sizes: 32 or 48",
    "model=resnet34_unet": "48x48 is not a multiple of 32 for resnet34_unet; nearest valid sizes: 32 or 64",
    "data.num_workers=-1": "data.num_workers must be an integer >= 0, got -1",
    "trainer.threshold=1.5": "trainer.threshold must be a number strictly between 0 and 1, got 1.5",
    "trainer.device=gpu0": "trainer.device=gpu0 is not a device",
    "trainer.amp=fp8": "trainer.amp=fp8 is not one of auto, off, bf16, fp16",
    "trainer.checkpoint.every_n_steps=0": "trainer.checkpoint.every_n_steps must be a positive int, got 0",
    "aug.train.0._target_=albumentations.Nope": "aug 'default': cannot build train[0]",
    "trainer.foo=1": "unknown key 'trainer.foo' (trainer.foo=1); --help lists the keys",
    "optim.lrr=1e-3": "unknown key 'optim.lrr' (optim.lrr=1e-3); did you mean optim.lr?",
    "+optim.lrr=1e-3": "unknown key 'optim.lrr' (+optim.lrr=1e-3); did you mean optim.lr?",
    "++optim.lrr=1e-3": "unknown key 'optim.lrr' (++optim.lrr=1e-3); did you mean optim.lr?",
    "epochs=1": "unknown key 'epochs' (epochs=1); did you mean trainer.epochs?",
    "epoch=3": "unknown key 'epoch' (epoch=3); did you mean trainer.epochs?",
    "trainer.epoch=3": "unknown key 'trainer.epoch' (trainer.epoch=3); did you mean trainer.epochs?",
    "trainer.accumulate=0": "trainer.accumulate=0 must be an integer >= 1",
    "trainer.ema=2": "trainer.ema=2 must be null (off) or a decay between 0 and 1",
    "trainer.size_schedule=[[48,1]]": "trainer.size_schedule: size 48 must be a multiple of 32",
    "trainer.checkpoint.every_n_minutes=0": "trainer.checkpoint.every_n_minutes (or null) must be a positive",
    "optim.lr=[": "cannot parse override 'optim.lr=[': no viable alternative at input '['",
    "model=unet,resnet34_unet": "Ambiguous value for argument 'model=unet,resnet34_unet'",
    "trainer.resume=/no/such/run": "trainer.resume=/no/such/run: no checkpoint there",
}


@pytest.mark.parametrize("override", list(CONFIG_MISTAKES))
def test_config_mistakes_are_one_line_and_exit_code_2(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture
):
    argv = [*tiny(), override]
    if override.startswith("model=resnet"):  # a size fine for unet; no unet-only keys
        argv = [a for a in argv if not a.startswith("model.")] + ["data.image_size=48"]
    code, err = run_train(argv, tmp_path / "run", capsys)
    assert code == 2, err
    assert_one_error_line(err, CONFIG_MISTAKES[override])
    assert "+" not in err.replace(override, "")  # never advises adding a key nothing would read
    assert not (tmp_path / "run").exists()  # rejected before any work: nothing left behind


def test_a_missing_dataset_says_how_to_download(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, err = run_train(tiny(tmp_path / "pets"), tmp_path / "run", capsys)
    assert code == 2
    assert_one_error_line(
        err, f"dataset root {tmp_path / 'pets'} does not exist", f"root={tmp_path / 'pets'} download=true"
    )


def test_a_test_image_in_trainval_stops_training(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, err = run_train(tiny(leaky_root(tmp_path)), tmp_path / "run", capsys)
    assert code == 2
    assert_one_error_line(err, "also in test.txt", TEST_NAME)


def test_internal_errors_are_not_turned_into_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def broken(_cfg: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(run_module, "check_train_config", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # its traceback and exit code 1 stay
        run_train(tiny(), tmp_path / "run", capsys)


def test_ctrl_c_before_training_exits_130_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def interrupted(_cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "check_train_config", interrupted)
    code, err = run_train(tiny(), tmp_path / "run", capsys)
    assert code == 130
    assert_one_error_line(err, "interrupted")


def test_cli_restores_argv_and_environment(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv, full_error = list(sys.argv), os.environ.get("HYDRA_FULL_ERROR")
    run_train(["optim=adam"], tmp_path / "run", capsys)
    assert sys.argv == argv and os.environ.get("HYDRA_FULL_ERROR") == full_error


# ----------------------------------------------------------------------------- checkpoint loading
@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Files that are not usable checkpoints, each with the words its error must contain."""
    tmp = tmp_path_factory.mktemp("bad")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=tiny())
    config = OmegaConf.to_container(cfg, resolve=True)
    unet = build_model(**cfg.model).state_dict()
    wider = build_model(**{**cfg.model, "base_width": 8}).state_dict()
    resnet = build_model("resnet34_unet").state_dict()
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, expected: str, write: object) -> None:
        path = tmp / name
        write(path)
        files[name] = (path, expected)

    add("random.pth", "is not a petseg checkpoint (", lambda p: p.write_bytes(os.urandom(2048)))
    add("notes.pth", "is not a petseg checkpoint (", lambda p: p.write_text("weights: 1, 2, 3\n"))
    add("empty.pth", "is not a petseg checkpoint (", lambda p: p.write_bytes(b""))
    add("tensor.pth", "(it holds a Tensor, not a checkpoint dict)", lambda p: torch.save(torch.ones(4), p))
    add("state_dict.pth", "(a plain state_dict without the config)", lambda p: torch.save(unet, p))
    add(
        "no_config.pth",
        "is not a petseg checkpoint (missing keys: config)",
        lambda p: save_checkpoint(p, {"model": unet}),
    )
    add(
        "no_weights.pth",
        "is not a petseg checkpoint (missing keys: model)",
        lambda p: save_checkpoint(p, {"config": config}),
    )
    add(
        "wider.pth",
        "do not fit the 'unet' model its config describes (0 missing, 0 unexpected, ",
        lambda p: save_checkpoint(p, {"model": wider, "config": config}),
    )
    add(
        "resnet_weights.pth",
        "do not fit the 'unet' model its config describes",
        lambda p: save_checkpoint(p, {"model": resnet, "config": config}),
    )
    files["folder"] = (tmp, "is a folder")
    files["missing"] = (tmp / "nope.pth", "checkpoint not found")
    return files


def test_bad_checkpoints_are_clear_errors_in_evaluate_and_inference(
    bad_checkpoints: dict[str, tuple[Path, str]], tmp_path: Path, capsys: pytest.CaptureFixture
):
    shutil.copy(SAMPLE / "images" / "Bengal_100.jpg", tmp_path / "pet.jpg")
    for name, (path, expected) in bad_checkpoints.items():
        code = evaluate.main([f"checkpoint={path}", "split=test", f"output={tmp_path / 'm.json'}"])
        assert code == 2, name
        assert_one_error_line(capsys.readouterr().err, expected)
        code = inference.main([f"checkpoint={path}", f"input={tmp_path / 'pet.jpg'}", f"output={tmp_path}"])
        assert code == 2, name
        assert_one_error_line(capsys.readouterr().err, expected)
    assert not (tmp_path / "m.json").exists() and not list(tmp_path.glob("*_mask.png"))


def test_a_good_checkpoint_still_loads(bad_checkpoints: dict[str, tuple[Path, str]], tmp_path: Path):
    wider_path, _ = bad_checkpoints["wider.pth"]
    ckpt = load_checkpoint(wider_path)
    ckpt["config"]["model"]["base_width"] = 8  # now config and weights agree
    save_checkpoint(tmp_path / "ok.pth", ckpt)
    from petseg.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(tmp_path / "ok.pth"))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


# ------------------------------------------------------------- evaluate.py / inference.py arguments
@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained width-4 UNet at 32 px on the sample, saved as train.py saves its checkpoints."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=tiny())
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    config = OmegaConf.to_container(cfg, resolve=True)
    return save_checkpoint(path, {"model": build_model(**cfg.model).state_dict(), "config": config})


COMMAND_MISTAKES = {
    "threshold=1.5": "threshold must be a number strictly between 0 and 1, got 1.5",
    "threshold=0": "threshold must be a number strictly between 0 and 1, got 0",
    "data.image_size=250": "image size 250x250 is not a multiple of 16 for unet",
    "data.batch_size=0": "data.batch_size must be a positive int, got 0",
    "device=gpu0": "device=gpu0 is not a device",
    "data.imag_size=64": "unknown key 'data.imag_size' (data.imag_size=64); did you mean data.image_size?",
    "treshold=0.4": "unknown key 'treshold' (treshold=0.4); did you mean threshold?",
}


@pytest.mark.parametrize("mistake", list(COMMAND_MISTAKES))
def test_evaluate_and_inference_mistakes_are_one_line_and_exit_2(
    mistake: str, tiny_model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    common = [f"checkpoint={tiny_model_file}", "split=valid", f"data.root={SAMPLE}", mistake]
    assert evaluate.main([*common, f"output={tmp_path / 'm.json'}"]) == 2
    assert_one_error_line(capsys.readouterr().err, COMMAND_MISTAKES[mistake])
    assert inference.main([*common, f"output={tmp_path / 'out'}"]) == 2
    assert_one_error_line(capsys.readouterr().err, COMMAND_MISTAKES[mistake])
    assert not (tmp_path / "m.json").exists()


def test_a_missing_cuda_names_the_commands_own_key(tiny_model_file: Path, capsys: pytest.CaptureFixture):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert evaluate.main([f"checkpoint={tiny_model_file}", "device=cuda", f"data.root={SAMPLE}"]) == 2
    assert_one_error_line(
        capsys.readouterr().err, "device=cuda but CUDA is not available here; use device=auto"
    )


def test_inference_on_files_refuses_data_keys_it_would_ignore(
    tiny_model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    shutil.copy(SAMPLE / "images" / "Bengal_100.jpg", tmp_path / "pet.jpg")
    args = [f"checkpoint={tiny_model_file}", f"input={tmp_path / 'pet.jpg'}", f"output={tmp_path / 'o'}"]
    assert inference.main([*args, "data.imag_size=64"]) == 2
    assert_one_error_line(capsys.readouterr().err, "data.imag_size: data settings apply to split=...")


# A line of each command's --help: the key, its default, the start of the comment beside it in the YAML.
HELP_LINES = {
    "evaluate.py": "threshold=0.5            on sigmoid(logits)",
    "inference.py": "threshold=0.5            on sigmoid(logits)",
    "curves.py": "runs=???                 run dirs or sweep dirs",
    "sweep_summary.py": "sweep_dir=???            a multirun dir",
    "oxford_pet.py": "verify=false             decode every image and trimap",
}


@pytest.mark.slow  # a subprocess of a real command
@pytest.mark.parametrize("command", list(HELP_LINES))
def test_help_lists_every_key_with_its_default_and_meaning(command: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / command), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stderr
    name = command.removesuffix(".py")
    for key, value in OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml")).items():
        default = "{}" if value == {} else "null" if value is None else str(value).lower()
        assert f"  {key}={default}".lower() in result.stdout.lower(), key
    assert HELP_LINES[command] in result.stdout
    assert result.stdout.startswith(f"`python src/{command} "), "the usage line comes first"


# ------------------------------------------------------- curves.py, sweep_summary.py, oxford_pet.py
KEY_VALUE_MISTAKES = [
    (curves, [], "missing required argument(s): runs=..."),
    (curves, ["runs=x", "lables=[a]"], "unknown key 'lables' (lables=[a]); did you mean labels?"),
    (curves, ["outputs/a", "--labels", "x"], "arguments must look like key=value, got: outputs/a --labels x"),
    (curves, ["runs=10:00"], "runs: YAML read this value as a number (600), not a path; quote it"),
    (curves, ["runs=[]"], "runs=[] names no path"),
    (sweep_summary, [], "missing required argument(s): sweep_dir=..."),
    (sweep_summary, ["sweepdir=x"], "unknown key 'sweepdir' (sweepdir=x); did you mean sweep_dir?"),
    (sweep_summary, ["sweep_dir=[a,b]"], "sweep_dir: YAML read this value as a list"),
    (oxford_pet, ["roots=x"], "unknown key 'roots' (roots=x); did you mean root?"),
    (oxford_pet, ["--root", "x"], "arguments must look like key=value, got: --root x"),
    (oxford_pet, ["verify=maybe"], "verify must be true or false, got maybe"),
    (oxford_pet, [f"root={SAMPLE}", "download=1"], "download must be true or false, got 1"),
]


@pytest.mark.parametrize(("command", "argv", "message"), KEY_VALUE_MISTAKES)
def test_key_value_mistakes_of_curves_sweep_summary_and_the_data_command_are_one_line_and_exit_2(
    command: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert command.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, message)


def test_list_values_are_paths_and_labels_as_written() -> None:
    """OmegaConf's dotlist reads ``[a,b]`` as YAML: a dated sweep dir stays one string, one run needs no
    brackets, and a label with a comma goes in quotes."""
    cfg = load_cli_config("curves", ["runs=[outputs/multirun/2026-11-26/10-00-00,outputs/x]"])
    assert as_paths(cfg.runs, "runs") == [Path("outputs/multirun/2026-11-26/10-00-00"), Path("outputs/x")]
    assert as_paths(load_cli_config("curves", ["runs=outputs/a"]).runs, "runs") == [Path("outputs/a")]
    assert as_paths(load_cli_config("curves", ["runs=['10:00']"]).runs, "runs") == [Path("10:00")]
    cfg = load_cli_config("curves", ["runs=[a,b]", 'labels=["UNet (w64, 96 px)",R34]', "title=Dice, 2 runs"])
    assert curves.labels_of(cfg.labels) == ["UNet (w64, 96 px)", "R34"] and cfg.title == "Dice, 2 runs"
    assert curves.labels_of(load_cli_config("curves", ["runs=a", "labels=UNet"]).labels) == ["UNet"]
    cfg = load_cli_config("oxford_pet", ["download=true"])
    assert cfg.root == "dataset/oxford-iiit-pet" and cfg.download is True and cfg.verify is False
