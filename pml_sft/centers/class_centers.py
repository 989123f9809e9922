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
    """

    labels: torch.Tensor
    centers: torch.Tensor
    in_batch: torch.Tensor
    sample_rows: torch.Tensor

    def __len__(self):
        return self.labels.shape[0]

    def keep(self, valid):
        """Only the rows where ``valid`` (K,) is True; samples of the others get -1."""
        if bool(valid.all()):
            return self
        rows = valid.nonzero().squeeze(1)
        new_row = torch.full_like(valid, -1, dtype=torch.long)
        new_row[rows] = torch.arange(rows.shape[0], device=rows.device)
        sample_rows = self.sample_rows.clamp_min(0)
        return ClassCenters(
            labels=self.labels[rows],
            centers=self.centers[rows],
            in_batch=self.in_batch[rows],
            sample_rows=torch.where(self.sample_rows >= 0, new_row[sample_rows], -1),
        )
