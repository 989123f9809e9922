import torch

from ..centers.base_class_centers import (
    BaseClassCenters,
    centers_from_table,
    check_labels_in_range,
)


class ProxyClassCenters(BaseClassCenters):
    """The class proxies of a proxy loss as class centres (normalised, detached).

    For losses that learn one vector per class: ``ProxyAnchorLoss``,
    ``ProxyNCALoss`` and ``NormalizedSoftmaxLoss`` (their ``proxies`` or ``W``
    parameter). The centres follow the loss as it trains, cost nothing to estimate,
    and exist for every class, in the batch or not.

    Args:
        loss: the proxy loss (the same object the wrapper wraps).
    """

    remembers_classes = True

    def __init__(self, loss, **kwargs):
        super().__init__(**kwargs)
        if self.proxy_table(loss) is None:
            raise TypeError(
                f"{type(loss).__name__} has no class proxies (a 'proxies' parameter "
                "of shape (num_classes, D) or 'W' of shape (D, num_classes))"
            )
        # held by reference, not as a sub-module (nor an attribute that
        # record-keeper walks into): the loss belongs to the wrapper, which logs it
        self.__dict__["source"] = LossReference(loss)

    @staticmethod
    def proxy_table(loss):
        proxies = getattr(loss, "proxies", None)
        if isinstance(proxies, torch.Tensor) and proxies.dim() == 2:
            return proxies
        weight = getattr(loss, "W", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return weight.T
        return None

    def check_inputs(self, embeddings, labels):
        table = self.proxy_table(self.source.loss)
        if table.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"the proxies have size {table.shape[1]} but the embeddings "
                f"{embeddings.shape[1]}"
            )
        check_labels_in_range(labels, table.shape[0], type(self).__name__)

    def compute(self, embeddings, labels, include_absent=True):
        table = self.proxy_table(self.source.loss).detach()
        table = table.to(embeddings.device, embeddings.dtype)
        known = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
        return centers_from_table(table, known, labels.long(), include_absent)


class LossReference:
    """A plain holder of the proxy loss (neither a module nor one of record-keeper's
    recursive types)."""

    def __init__(self, loss):
        self.loss = loss
