"""The test package. Like PML's ``tests/__init__.py`` it provides ``TEST_DEVICE`` and
``TEST_DTYPES`` (from the environment; here float32,float64 on the CPU by default), so
that ``tests/losses/test_sft_loss.py`` runs unchanged here and in PML's ``tests/losses``.
"""

import sys

import pytorch_metric_learning.losses

from pml_sft.upstream import sft_loss

from .helpers import DEVICE as TEST_DEVICE
from .helpers import DTYPES as TEST_DTYPES

# Until the loss is merged, make the upstream file importable under the name it will
# have inside PML (only in this test process; a PML checkout with it is left alone).
if not hasattr(pytorch_metric_learning.losses, "SFTLoss"):
    sys.modules["pytorch_metric_learning.losses.sft_loss"] = sft_loss
    pytorch_metric_learning.losses.sft_loss = sft_loss
    pytorch_metric_learning.losses.SFTLoss = sft_loss.SFTLoss

__all__ = ["TEST_DEVICE", "TEST_DTYPES"]
