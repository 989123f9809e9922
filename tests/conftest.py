"""Shared test settings.

Like PML's own tests, the device and dtypes come from the environment:
``TEST_DEVICE=cuda TEST_DTYPES=float32,float64 pytest``.
"""

import pytest

from pml_sft.functional import compilation, set_compile_mode

from .helpers import DEVICE, DTYPES

# Tests run the eager kernels unless a test asks for the compiled path itself.
set_compile_mode("never")


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(params=DTYPES, ids=str)
def dtype(request):
    return request.param


@pytest.fixture
def compile_mode():
    """Set the compile mode for one test (a fresh compile state, restored after)."""
    old = compilation.get_compile_mode()
    compilation.reset_compile_state()
    yield compilation.set_compile_mode
    compilation.set_compile_mode(old)
    compilation.reset_compile_state()
