"""The result type shared by the class-centre estimators."""

from dataclasses import dataclass

import torch


@dataclass
class ClassCenters:
    """Unit class centres known after looking at a batch.

    Attributes:
        labels: (K,) class label of each centre row.
        centers: (K, D) unit centres, in the dtype of the rows they were computed
            from (the augmenters pass float32 rows for half-precision embeddings).
        in_batch: (K,) True where the class has samples in the current batch.
        sample_rows: (N,) for each sample of the batch, the row of its own class's
            centre, or -1 when its class has no usable centre.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    in_batch: torch.Tensor
    sample_rows: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]
