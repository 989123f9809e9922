"""The result type shared by the class-centre estimators."""

from dataclasses import dataclass

import torch


@dataclass
class ClassCenters:
    """Unit class centres known after looking at a batch.

    Attributes:
        labels: (K,) class label of each centre row.
        centers: (K, D) unit centres (float32 for half-precision input, else the
            input's dtype).
        in_batch: (K,) True where the class has samples in the current batch.
        sample_rows: (N,) for each sample of the batch, the row of its own class's
            centre, or -1 when its class has no usable centre.
        dense: True when it is known that every row is a class of the batch and
            every sample has a centre (``in_batch`` all True, no -1 in
            ``sample_rows``), which lets callers skip those checks; False when
            unknown.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    in_batch: torch.Tensor
    sample_rows: torch.Tensor
    dense: bool = False

    def __len__(self):
        return self.labels.shape[0]
