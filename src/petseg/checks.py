"""Config checks that run before any work, so a typo costs a second, not an epoch.

Each group's keys are checked by its reader (petseg/settings.py ``run_settings``: data_settings.py and
the others); this module adds what concerns more than one group: the model and its data, the
optimiser's lr. Each check raises a PetsegError with one line naming the key, the bad value and what
would be valid; train.py prints it and exits with code 2.
"""

from __future__ import annotations

from omegaconf import DictConfig

from models import check_input_size
from petseg.data_settings import DataSettings
from petseg.errors import PetsegError
from petseg.runtime import AMP_DTYPES
from petseg.settings import RunSettings, run_settings
from petseg.value_checks import check_device, optional_positive_int, positive


def check_model_fits_data(model_name: str, data: DataSettings, in_channels: object = None) -> None:
    """The model takes the data: its in_channels (when set) are data.channels, and it takes
    data.image_size (and data.crop) as input sizes. Also an unknown model name, in the registry's words."""
    if in_channels is not None and data.channels is not None and in_channels != data.channels:
        raise PetsegError(
            f"model.in_channels={in_channels} but data.channels={data.channels}: the model takes the data's "
            "channels (leave model.in_channels unset)"
        )
    check_input_size(model_name, data.image_size, data.image_size)
    crop = data.folder.crop if data.folder is not None else None
    if crop is not None:
        check_input_size(model_name, crop, crop)


def _validate_runtime_keys(t: DictConfig) -> None:
    if isinstance(t.seed, bool) or not isinstance(t.seed, int):
        raise PetsegError(f"trainer.seed must be an integer, got {t.seed!r}")
    if t.threads != "auto":
        optional_positive_int(t.threads, "trainer.threads (or auto)")
    if str(t.amp) not in ("auto", *AMP_DTYPES):
        raise PetsegError(f"trainer.amp={t.amp} is not one of auto, {', '.join(AMP_DTYPES)}")
    check_device(t.device, "trainer.device")


def check_train_config(cfg: DictConfig) -> RunSettings:
    """The run's settings (``run_settings``: every group read and checked once), or a PetsegError with
    one clear line for the first user mistake found in a training config.

    Covers numbers (lr, batch size, epochs, image size the model can take, trainer settings) and the
    model name. What a builder checks anyway is left to it, once: the augmentation pipeline, the
    dataset root and the test-leak guard (build_dataset), the optimiser, schedule and loss arguments
    (petseg/build.py). Group options (``model=foo``) are Hydra's to
    reject; train.py turns that into the same kind of one-line error.
    """
    positive(cfg.optim.lr, "optim.lr")
    settings = run_settings(cfg)
    check_model_fits_data(cfg.model.name, settings.data, cfg.model.get("in_channels"))
    _validate_runtime_keys(cfg.trainer)
    return settings
