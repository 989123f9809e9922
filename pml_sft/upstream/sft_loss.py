"""Spherical Feature Transform, https://arxiv.org/abs/2008.01469 (ECCV 2020)."""

import torch
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper
from pytorch_metric_learning.losses.base_metric_loss_function import (
    BaseMetricLossFunction,
)
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

# Rows with 1 + <src, dst> below this are rotated with the plane form, which stays
# accurate for (nearly) antipodal centres; the closed form divides by 1 + <src, dst>.
ANTIPODAL_MARGIN = 0.1
# Without a schedule, augmentation starts once the mean plain loss over a window of
# PLATEAU_WINDOW steps fell by less than PLATEAU_TOLERANCE (relative) from the last.
PLATEAU_WINDOW, PLATEAU_TOLERANCE = 100, 0.05

NO_LABELS = "it takes no labels, and synthetic samples exist only through labels"
UNSUPPORTED_LOSSES = {
    "CrossBatchMemory": "it would keep synthetic samples, made from the current "
    "model's centres, in a memory bank that serves later steps",
    "ManifoldLoss": NO_LABELS,
    "NPairsLoss": "it uses only the first positive pair of each class, which is "
    "always made of real samples, so augmentation would have no effect",
    "SelfSupervisedLoss": NO_LABELS,
    "SmoothAPLoss": "it needs equal, contiguous class blocks, which randomly drawn "
    "target classes do not keep",
    "VICRegLoss": NO_LABELS,
}
# losses that take no indices_tuple, so no miner can act on them
NO_TUPLES = ("InstanceLoss", "P2SGradLoss", "PNPLoss", "RankedListLoss")


def compute_dtype(dtype):  # float16 and bfloat16 are computed in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def inner(a, b):  # row-wise inner products of two (N, D) tensors
    return (a * b).sum(dim=1)


def plane_basis(a, b):
    """For unit rows a, b: cos t = <a, b>, sin t, and the unit v orthogonal to a with
    b = cos t a + sin t v. Where b = +-a, v is any unit vector orthogonal to a."""
    c = inner(a, b)
    w = b - c.unsqueeze(1) * a
    # again (b - c a cancels when b ~ -a), exactly for a of norm not quite 1
    w = w - (inner(a, w) / inner(a, a)).unsqueeze(1) * a
    s = w.norm(dim=1)  # where w is rounding noise: use e_k - <a, e_k> a
    degenerate = s < torch.finfo(a.dtype).eps
    k = a.abs().argmin(dim=1, keepdim=True)
    u = torch.zeros_like(a).scatter_(1, k, 1.0) - a.gather(1, k) * a
    u = u / u.norm(dim=1, keepdim=True)
    w = w / torch.where(degenerate, 1 + s, s)[:, None]
    return c, s, torch.where(degenerate[:, None], u, w)


def rotate(x, src, dst):
    """Rotate each row of ``x`` (N, D) by the minimal rotation R carrying the unit row
    ``src`` onto the unit row ``dst`` (it turns span{src, dst} and is the identity on
    its orthogonal complement), in O(N D). With a = src, b = dst:

        R x = x - (<a + b, x> / (1 + <a, b>)) (a + b) + 2 <a, x> b

    Nearly antipodal rows use the plane form, with b = cos t a + sin t v:
    R x = x + (cos t - 1)(<a,x> a + <v,x> v) + sin t (<a,x> v - <v,x> a); for b = -a,
    a half-turn towards a fixed orthogonal direction. Half precision: in float32.
    """
    x, a, b = (t.to(compute_dtype(x.dtype)) for t in (x, src, dst))
    p, q, denom = inner(a, x), inner(b, x), 1 + inner(a, b)
    near = denom < ANTIPODAL_MARGIN
    k = (p + q) / torch.where(near, torch.ones_like(denom), denom)
    out = torch.addcmul(x, -k.unsqueeze(1), a).addcmul((2 * p - k).unsqueeze(1), b)
    if bool(near.any()):
        rows = near.nonzero(as_tuple=False).squeeze(1)
        c, s, v = plane_basis(a[rows], b[rows])
        p, r = p[rows], inner(v, x[rows])
        in_plane = ((c - 1) * p - s * r).unsqueeze(1) * a[rows]
        in_plane = in_plane + ((c - 1) * r + s * p).unsqueeze(1) * v
        out = out.index_copy(0, rows, x[rows] + in_plane)
    return out


def class_sums(embeddings, labels):
    """(labels (K,), inverse (N,), per-class sums (K, D), counts (K,)) for the classes
    present; half precision is summed in float32. Differentiable."""
    unique, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    x = embeddings.to(compute_dtype(embeddings.dtype))
    sums = x.new_zeros(len(unique), x.shape[1]).index_add(0, inverse, x)
    return unique, inverse, sums, counts


def batch_class_centers(embeddings, labels, min_samples=2):
    """The unit mean of each class with at least ``min_samples`` samples (and a
    non-zero mean). Returns (labels (K,), centers (K, D), sample_rows (N,)): for each
    sample the row of its class's centre, or -1 when the class has none."""
    unique, inverse, sums, counts = class_sums(embeddings, labels)
    norms = sums.norm(dim=1)
    valid = (counts >= min_samples) & (norms > torch.finfo(sums.dtype).eps)
    row = torch.where(valid, valid.cumsum(0) - 1, torch.full_like(counts, -1))
    return unique[valid], sums[valid] / norms[valid].unsqueeze(1), row[inverse]


def draw_targets(allowed, num_targets, scores):
    """For each source (row of the (S, K) bool ``allowed``) up to ``num_targets``
    distinct allowed columns, uniformly at random: the highest of the (S, K) scores
    in [0, 1). Returns (source positions (M,), target columns (M,))."""
    k = min(num_targets, allowed.shape[1])
    top = scores.masked_fill(~allowed, -1.0).topk(k, dim=1)
    keep = (top.values >= 0).reshape(-1)
    positions = torch.arange(allowed.shape[0], device=allowed.device)
    positions = positions.unsqueeze(1).expand(-1, k).reshape(-1)
    return positions[keep], top.indices.reshape(-1)[keep]


def random_triplets(labels, anchors):
    """One random (anchor, positive, negative) triplet for each row in ``anchors``
    that has a positive and a negative among ``labels``."""
    same = labels[anchors].unsqueeze(1) == labels.unsqueeze(0)
    scores = torch.rand(same.shape, device=labels.device)
    positives = scores.masked_fill(~same, -1)  # an anchor is not its own positive:
    positives[torch.arange(len(anchors), device=labels.device), anchors] = -1
    p, neg = positives.max(dim=1), scores.masked_fill(same, -1).max(dim=1)
    keep = (p.values >= 0) & (neg.values >= 0)
    return anchors[keep], p.indices[keep], neg.indices[keep]


class SFTLoss(BaseLossWrapper, BaseMetricLossFunction):
    """Wraps a loss and adds rotated copies to each training batch: a sample of
    class i is rotated from the centre of i onto that of another class j of the batch
    and labelled j. Use DistributedLossWrapper with efficient=False.

    Args:
        loss: the loss to wrap.
        miner: an optional miner, run on the batch with the synthetic samples.
        num_targets: target classes per sample (k synthetic samples each).
        total_iterations: the length of training, for the validated schedule: no
            augmentation for the first half, then the weight of the augmented loss
            ramps from 0 to 1 over the next quarter. Without it, augmentation
            starts once the loss stops falling (PLATEAU_*), then ramps likewise.
        warmup_iterations, ramp_iterations: the iterations without augmentation
            and of the ramp (default: a half and a quarter of ``total_iterations``).
    """

    def __init__(
        self,
        loss,
        miner=None,
        num_targets=1,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        **kwargs,
    ):
        inner_options = {"distance", "reducer", "embedding_regularizer"} & set(kwargs)
        if inner_options:
            raise TypeError(f"set {sorted(inner_options)} on the wrapped loss")
        super().__init__(loss=loss, **kwargs)
        del self.distance, self.reducer  # the wrapped loss's apply
        if not (isinstance(num_targets, int) and num_targets >= 1):
            raise ValueError(f"num_targets must be an int >= 1, got {num_targets!r}")
        schedule = (total_iterations, warmup_iterations, ramp_iterations)
        for name, v in zip(("total", "warmup", "ramp"), schedule):
            if not (v is None or (isinstance(v, int) and v >= 0)):
                raise ValueError(f"{name}_iterations takes None or an int >= 0: {v!r}")
        if miner is not None and type(loss).__name__ in NO_TUPLES:
            raise ValueError(f"{type(loss).__name__} takes no indices_tuple: no miner")
        if total_iterations is not None:
            warmup, ramp = total_iterations // 2, total_iterations // 4
        else:  # the plateau start (warmup -2 until it is reached), ramp: half of it
            warmup, ramp = (-2, -1) if warmup_iterations is None else (0, 0)
        warmup = warmup if warmup_iterations is None else warmup_iterations
        ramp = ramp if ramp_iterations is None else ramp_iterations
        unreduced = type(getattr(loss, "reducer", None)).__name__ == "DoNothingReducer"
        if unreduced and warmup < 0:  # the plateau start watches the reduced loss
            raise ValueError("with DoNothingReducer pass total_iterations: no plateau")
        self.loss, self.miner, self.num_targets = loss, miner, num_targets
        self.warmup_iterations, self.ramp_iterations = warmup, ramp
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("schedule", torch.tensor([warmup, ramp]))
        self.register_buffer("window_loss", torch.zeros(2, dtype=torch.float64))
        names = ["num_targets", "warmup_iterations", "ramp_iterations"]
        self.add_to_recordable_attributes(list_of_names=names, is_stat=False)
        stats = ["num_augmented", "current_aug_weight"]
        self.add_to_recordable_attributes(list_of_names=stats, is_stat=True)

    @staticmethod
    def supported_losses():
        """Every loss PML exports, except UNSUPPORTED_LOSSES."""
        from pytorch_metric_learning import losses

        names = [n for n in dir(losses) if n.endswith(("Loss", "Losses"))]
        names = [n for n in names if not n.startswith(("Base", "Generic", "SFT"))]
        return [n for n in names if n not in UNSUPPORTED_LOSSES]

    @classmethod
    def check_loss_support(cls, loss_name):
        if loss_name in UNSUPPORTED_LOSSES:
            raise ValueError(
                f"{cls.__name__} cannot wrap {loss_name}: {UNSUPPORTED_LOSSES[loss_name]}"
            )

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("no ref_emb: synthetic samples join the batch itself")
        c_f.labels_required(labels)
        labels = c_f.to_device(labels, embeddings)
        self.reset_stats()
        self.current_aug_weight = weight = self.step_weight()
        self.num_augmented, n = 0, len(embeddings)
        if weight > 0:
            aug, aug_labels = self.augment(embeddings, labels)
            self.num_augmented = len(aug)
        if self.num_augmented == 0:
            loss = self.compute_loss(embeddings, labels, indices_tuple, n)
            if self.training and torch.is_grad_enabled() and self.warmup_iterations < 0:
                self.observe_plateau(loss)
            return loss
        all_embeddings = torch.cat([embeddings, aug])
        all_labels = torch.cat([labels, aug_labels.to(labels.dtype)])
        loss = self.compute_loss(all_embeddings, all_labels, indices_tuple, n)
        if weight < 1:
            plain = self.compute_loss(embeddings, labels, indices_tuple, n)
            loss = (1 - weight) * plain + weight * loss
        return loss

    def compute_loss(self, embeddings, labels, indices_tuple, n):
        """The wrapped loss on a batch whose first n rows are real."""
        tuples = self.create_indices_tuple(embeddings, labels, indices_tuple, n)
        return self.loss(embeddings, labels, tuples)

    def step_weight(self):
        """The weight of the augmented loss at this training step; a call with
        gradients enabled advances the schedule (a buffer, saved in ``state_dict``),
        one under no_grad gets the weight of the next step without advancing it."""
        self.warmup_iterations, self.ramp_iterations = self.schedule.tolist()
        t = int(self.iteration) + 1 - self.warmup_iterations
        self.iteration += int(self.training and torch.is_grad_enabled())
        if not self.training or self.warmup_iterations < 0 or t <= 0:
            return 0.0
        return min(1.0, t / self.ramp_iterations) if self.ramp_iterations > 0 else 1.0

    def observe_plateau(self, loss):
        """Adds a training step's plain loss to the window; at the end of a window
        that fell too little, augmentation starts, ramping over half the steps so far.
        """
        self.window_loss[0] += loss.detach().double().sum()
        step = int(self.iteration)
        if step % PLATEAU_WINDOW:
            return
        mean = float(self.window_loss[0]) / PLATEAU_WINDOW
        drop = float(self.window_loss[1]) - mean
        if step > PLATEAU_WINDOW and drop < PLATEAU_TOLERANCE * abs(mean + drop):
            ramp = step // 2 if self.ramp_iterations < 0 else self.ramp_iterations
            self.schedule.copy_(torch.tensor([step, ramp]))
        self.window_loss.copy_(torch.tensor([0.0, mean]))

    def augment(self, embeddings, labels):
        """Up to ``num_targets`` rotated copies of each sample whose class has a
        batch centre, each onto another class's centre, with that class's label."""
        x = torch.nn.functional.normalize(
            embeddings.to(compute_dtype(embeddings.dtype)), dim=1
        )
        center_labels, centers, rows = batch_class_centers(x.detach(), labels)
        sources = (rows >= 0).nonzero(as_tuple=False).squeeze(1)
        own = rows[sources]
        allowed = own.unsqueeze(1) != torch.arange(len(centers), device=own.device)
        scores = torch.rand(allowed.shape, device=allowed.device)
        positions, targets = draw_targets(allowed, self.num_targets, scores)
        sources = sources[positions]
        aug = rotate(x[sources], centers[rows[sources]], centers[targets])
        return aug.to(embeddings.dtype), center_labels[targets]

    def create_indices_tuple(self, embeddings, labels, indices_tuple, n):
        """The miner's tuples on the (enlarged) batch, with ``indices_tuple`` (mined
        on the n real rows) kept; without a miner, ``indices_tuple`` plus every pair
        that involves a synthetic row, or random triplets anchored at them."""
        if self.miner is not None:
            mined = self.miner(embeddings, labels)
            if indices_tuple is None:
                return mined
            if len(indices_tuple) != len(mined):
                pairs = len(mined) == 4
                convert = lmu.convert_to_pairs if pairs else lmu.convert_to_triplets
                indices_tuple = convert(indices_tuple, labels)
            return c_f.concatenate_indices_tuples(mined, indices_tuple)
        if indices_tuple is None or len(embeddings) == n:
            return indices_tuple
        if len(indices_tuple) == 4:
            a1, p, a2, neg = lmu.get_all_pairs_indices(labels)
            pos, negs = (a1 >= n) | (p >= n), (a2 >= n) | (neg >= n)
            extra = a1[pos], p[pos], a2[negs], neg[negs]
        else:  # random triplets at synthetic anchors, as many per row as were mined
            m = len(labels) - n
            count = max(1, round(len(indices_tuple[0]) * m / max(n, 1)))
            extra = random_triplets(labels, n + torch.randint(m, (count,)).to(labels))
        return c_f.concatenate_indices_tuples(indices_tuple, extra)
