"""benchmarks/models.py tells a user to install the optional reference exactly as requirements-bench.txt
says it must be installed (with --no-deps, which keeps the pinned CPU torch)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import ROOT

# Hides the reference package whether or not it is installed: its import then fails like a missing one.
# benchmarks/ first on sys.path, as python puts a script's folder (models.py imports plain.py from it).
WITHOUT_SMP = (
    "import runpy, sys; sys.modules['segmentation_models_pytorch'] = None; sys.path.insert(0, 'benchmarks'); "
    "sys.argv = ['benchmarks/models.py', *sys.argv[1:]]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.slow  # a subprocess of a real command
def test_models_benchmark_prints_the_requirements_files_own_install_command():
    text = (ROOT / "requirements-bench.txt").read_text()
    (required,) = re.findall(r"^# Install WITH --no-deps:\s+(.+?)\s*$", text, re.MULTILINE)
    assert "--no-deps" in required

    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SMP, "--models", "smp_unet_resnet34"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    hints = [line.strip() for line in result.stdout.splitlines() if "Install it with:" in line]
    assert hints == [f"Install it with: {required} (see the comments there)"], result.stdout
