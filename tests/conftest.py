"""Shared test settings.

Like PML's own tests, the device and dtypes come from the environment:
``TEST_DEVICE=cuda TEST_DTYPES=float32,float64 pytest``.
"""

import pytest

from .helpers import DEVICE, DTYPES


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(params=DTYPES, ids=str)
def dtype(request):
    return request.param
