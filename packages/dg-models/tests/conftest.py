from __future__ import annotations

import pytest

from dg_models import ModelLoadError, pretrained_file


@pytest.fixture(scope="session")
def smollm2_file():  # type: ignore[no-untyped-def]
    """The GGUF file of the pretrained SmolLM2 wheel; the tests that need it fail (not skip) without it."""
    try:
        return pretrained_file("smollm2")
    except ModelLoadError as error:
        pytest.fail(f"the pretrained tests need the SmolLM2 wheel (nox installs it): {error}")
