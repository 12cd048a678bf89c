"""Where path settings point, so a command started from any directory uses the project's own folders.

The defaults (``dataset/oxford-iiit-pet``, ``outputs/``, ``saved_models/``, ``.cache/petseg``) and any
other plain relative path are anchored at the project root. An absolute path, or one written explicitly
relative (``./x``, ``../x``, ``~/x``), means what it says in the shell: relative to the directory the
command was started from.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # src/petseg/paths.py -> the repository
CONFIG_DIR = PROJECT_ROOT / "configs"  # every command's YAML


def project_path(value: str | os.PathLike[str]) -> Path:
    """``value`` resolved by the rule of this module's docstring, as an absolute path."""
    text = os.path.expanduser(os.fspath(value))
    path = Path(text)
    if path.is_absolute():
        return path
    explicit = text in (".", "..") or text.startswith(("./", "../", ".\\", "..\\"))
    # hydra.job.chdir is false, so the current directory is still the one the command started in.
    return (Path.cwd() / path) if explicit else (PROJECT_ROOT / path)


def shown_path(path: str | os.PathLike[str], base: Path) -> str:
    """``path`` as a message shows it: relative to ``base`` when it lies below it, else absolute."""
    path = Path(path).absolute()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def project_relative(path: str | os.PathLike[str]) -> str:
    """``path`` as a page or message shows it: from the project root (``../shared/...``), not this machine's
    absolute path, unless it lies far outside the project."""
    relative = os.path.relpath(Path(path).resolve(), PROJECT_ROOT)
    return str(path) if relative.startswith(os.path.join(os.pardir, os.pardir, os.pardir)) else relative


def python_command(script: Path) -> str:
    """How to run ``script`` from the current directory, correct as written: this very interpreter (the
    project's venv, whether it is activated or not) and both paths relative when they lie below here."""
    here = Path.cwd()
    return f"{shlex.quote(shown_path(sys.executable, here))} {shlex.quote(shown_path(script, here))}"
