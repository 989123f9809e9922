"""The length of training, for the wrappers' schedule (``total_iterations``)."""

from typing import Optional

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from .checks import as_count


def training_iterations(
    dataset: "torch.utils.data.Dataset",
    batch_size: int,
    num_epochs: int,
    sampler: Optional["torch.utils.data.Sampler"] = None,
    iterations_per_epoch: Optional[int] = None,
) -> int:
    """The number of iterations a PML trainer (``MetricLossOnly``,
    ``TrainWithClassifier``, ...) runs for ``trainer.train(num_epochs=num_epochs)``
    with these arguments: ``iterations_per_epoch`` if given (not 0), else the length of
    the dataloader PML builds from the dataset, batch size and sampler. One line connects
    a trainer to the schedule::

        loss = pml_sft.SFTLoss(inner, total_iterations=pml_sft.training_iterations(
            dataset, batch_size, num_epochs, sampler))
    """
    num_epochs = as_count(num_epochs, "num_epochs")
    batch_size = as_count(batch_size, "batch_size")
    if not iterations_per_epoch:  # None or 0: PML's trainers use the loader's length
        loader = c_f.get_train_dataloader(dataset, batch_size, sampler, 0, None)
        iterations_per_epoch = len(loader)
        if iterations_per_epoch == 0:
            samples = len(sampler) if sampler is not None else len(dataset)
            raise ValueError(
                f"batch_size={batch_size} is larger than the {samples} samples "
                "an epoch draws: PML's trainers drop the last incomplete batch, so "
                "no iteration would run"
            )
    iterations_per_epoch = as_count(iterations_per_epoch, "iterations_per_epoch")
    return num_epochs * iterations_per_epoch
