"""Spherical Feature Transform, https://arxiv.org/abs/2008.01469 (ECCV 2020)."""

import math

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

# Rows with 1 + <src, dst> below this are rotated with the plane form, which stays
# accurate for (nearly) antipodal centres; the closed form divides by 1 + <src, dst>.
ANTIPODAL_MARGIN = 0.1
NO_LABELS = "it takes no labels, and synthetic samples exist only through labels"
UNSUPPORTED_LOSSES = {
    "CrossBatchMemory": "it would keep synthetic samples, made from the current "
    "model's centres, in a memory bank that serves later steps",
    "ManifoldLoss": NO_LABELS,
    "NPairsLoss": "it uses only the first positive pair of each class, which is "
    "always made of real samples, so augmentation would have no effect",
    "SelfSupervisedLoss": NO_LABELS,
    "SFTLoss": "it is SFTLoss itself; wrap the inner loss once",
    "SmoothAPLoss": "it needs equal, contiguous class blocks, which randomly drawn "
    "target classes do not keep",
    "VICRegLoss": NO_LABELS,
}
SUPPORTED_LOSSES = (
    "AngularLoss ArcFaceLoss CircleLoss ContrastiveLoss CosFaceLoss "
    "DynamicSoftMarginLoss FastAPLoss GeneralizedLiftedStructureLoss HistogramLoss "
    "InstanceLoss IntraPairVarianceLoss LargeMarginSoftmaxLoss LiftedStructureLoss "
    "MarginLoss MultipleLosses MultiSimilarityLoss NCALoss NormalizedSoftmaxLoss "
    "NTXentLoss P2SGradLoss PNPLoss ProxyAnchorLoss ProxyNCALoss RankedListLoss "
    "SignalToNoiseRatioContrastiveLoss SoftTripleLoss SphereFaceLoss "
    "SubCenterArcFaceLoss SupConLoss ThresholdConsistentMarginLoss "
    "TripletMarginLoss TupletMarginLoss"
).split()
UNSUPPORTED_MINERS = {
    "EmbeddingsAlreadyPackagedAsTriplets": "it reads triplets from the batch layout "
    "(a, p, n, a, p, n, ...), which appended samples do not follow; use it as the "
    "outer miner instead (indices_tuple), whose triplets stay valid",
}
# losses that take no indices_tuple, so no miner can act on them
NO_TUPLES = ("InstanceLoss", "P2SGradLoss", "PNPLoss", "RankedListLoss")
TRANSFORMS = ("rotation", "translation")


def _compute_dtype(dtype):  # float16 and bfloat16 are computed in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _inner(a, b):  # row-wise inner products of two (N, D) tensors
    return (a * b).sum(dim=1)


def _plane_basis(a, b):
    """For unit rows a, b: cos t = <a, b>, sin t, and the unit v orthogonal to a with
    b = cos t a + sin t v. Where b = +-a, v is any unit vector orthogonal to a."""
    c = _inner(a, b)
    w = b - c.unsqueeze(1) * a
    # again (b - c a cancels when b ~ -a), exactly for a of norm not quite 1
    w = w - (_inner(a, w) / _inner(a, a)).unsqueeze(1) * a
    s = w.norm(dim=1)
    # Where b = +-a, w is only rounding noise. Then use the unit vector along
    # e_k - <a, e_k> a, with k the coordinate where a is smallest.
    degenerate = s < torch.finfo(a.dtype).eps
    k = a.abs().argmin(dim=1, keepdim=True)
    u = torch.zeros_like(a).scatter_(1, k, 1.0) - a.gather(1, k) * a
    u = u / u.norm(dim=1, keepdim=True)
    w = w / torch.where(degenerate, 1 + s, s).unsqueeze(1)
    return c, s, torch.where(degenerate.unsqueeze(1), u, w)


def _rotate(x, a, b):
    """Each row of x (any norm) turned by the minimal rotation R carrying the unit
    row a onto the unit row b (it turns span{a, b}, the identity elsewhere), in
    O(N D): R x = x - (<a + b, x> / (1 + <a, b>)) (a + b) + 2 <a, x> b. Nearly
    antipodal rows use the plane form, with b = cos t a + sin t v:
    R x = x + (cos t - 1)(<a,x> a + <v,x> v) + sin t (<a,x> v - <v,x> a)."""
    p, q, denom = _inner(a, x), _inner(b, x), 1 + _inner(a, b)
    near = denom < ANTIPODAL_MARGIN
    k = (p + q) / torch.where(near, torch.ones_like(denom), denom)
    out = torch.addcmul(x, -k.unsqueeze(1), a).addcmul((2 * p - k).unsqueeze(1), b)
    if bool(near.any()):  # a host sync; rare rows, computed apart, in float64
        rows = near.nonzero(as_tuple=False).squeeze(1)  # (v loses eps / sin t)
        xr, ar, br = (t[rows].double() for t in (x, a, b))
        c, s, v = _plane_basis(ar, br)
        p, r = _inner(ar, xr), _inner(v, xr)
        in_plane = ((c - 1) * p - s * r).unsqueeze(1) * ar
        in_plane = in_plane + ((c - 1) * r + s * p).unsqueeze(1) * v
        out = out.index_copy(0, rows, (xr + in_plane).to(out.dtype))
    return out


def _translate(x, a, b):
    """x moved by the unit centres' difference on its direction, norm kept:
    |x| normalize(x / |x| - a + b) (feature transfer, Yin et al., CVPR 2019)."""
    unit, norms = _unit(x)
    return _unit(unit - a + b)[0] * norms


MOVES = {"rotation": _rotate, "translation": _translate}


def _unit(x):
    """Unit rows and norms (N, 1) of x, exact also where squares under- or overflow
    (zero rows stay zero)."""
    scale = x.abs().max(dim=1, keepdim=True).values
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero rows stay 0
    norms = (x / scale).norm(dim=1, keepdim=True)
    return x / scale / norms.clamp(min=0.5), norms * scale


def _class_sums(unit, labels):
    """(labels (K,), inverse (N,), per-class sums (K, D), counts (K,)) of the
    classes present. Differentiable, and the same bits on every run."""
    unique, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    unit = unit.to(_compute_dtype(unit.dtype))  # half precision: summed in float32
    # a matrix product, not index_add: CUDA's atomic adds are not reproducible
    members = unique.unsqueeze(1) == labels.unsqueeze(0)
    return unique, inverse, members.to(unit.dtype) @ unit, counts


def _batch_class_centers(unit, labels, min_samples=2):
    """The unit mean of each class with at least ``min_samples`` rows (and a non-zero
    mean) among the unit rows. Returns (labels (K,), centers (K, D), rows (N,)): for
    each row the row of its class's centre, or -1."""
    unique, inverse, sums, counts = _class_sums(unit, labels)
    norms = sums.norm(dim=1)
    valid = (counts >= min_samples) & (norms > torch.finfo(sums.dtype).eps)
    row = torch.where(valid, valid.long().cumsum(0) - 1, torch.full_like(counts, -1))
    keep = valid.nonzero(as_tuple=False).squeeze(1)  # one host sync
    centers = sums[keep] / norms[keep].unsqueeze(1)
    return unique[keep], centers, row[inverse]


def _top_columns(scores, allowed, k):
    """The columns of the (up to) k highest allowed scores of each row: (columns
    (R, k), valid (R, k))."""
    top = scores.masked_fill(~allowed, -float("inf")).topk(min(k, scores.shape[1]), 1)
    return top.indices, top.values > -float("inf")


def _draw_targets(allowed, num_targets, scores):
    """For each row of the (N, K) bool ``allowed``, up to ``num_targets`` distinct
    allowed columns: those of highest score (scores in [0, 1); a negative score
    also disallows). Returns (row positions (M,), columns (M,))."""
    columns, valid = _top_columns(scores, allowed & (scores >= 0), num_targets)
    rows, k = valid.nonzero(as_tuple=True)  # one host sync
    return rows, columns[rows, k]


def _transform(embeddings, labels, center_labels, centers, scores, move, k=1):
    """The augmentation step: each row whose label has one of the unit ``centers``
    moved from its centre onto up to ``k`` other centres, those of highest
    ``scores`` (N, K). Returns (moved rows (M, D) in the embeddings' dtype, source
    rows (M,), source centre rows (M,), target centre rows (M,))."""
    own = labels.unsqueeze(1) == center_labels.unsqueeze(0)
    sources, targets = _draw_targets(own.any(1, keepdim=True) & ~own, k, scores)
    columns = torch.arange(own.shape[1], device=own.device)
    own_rows = (own[sources].long() * columns).sum(dim=1)
    x = embeddings[sources].to(_compute_dtype(embeddings.dtype))
    table = centers.to(x.dtype)
    moved = move(x, table[own_rows], table[targets])
    return moved.to(embeddings.dtype), sources, own_rows, targets


def _mix(plain, augmented, weight):
    """(1 - w) plain + w augmented; loss dicts (DoNothingReducer) keep every entry,
    its losses scaled, the plain ones under '<name>_plain'."""
    if not isinstance(plain, dict):
        return (1 - weight) * plain + weight * augmented
    mixed = {k: dict(v, losses=v["losses"] * weight) for k, v in augmented.items()}
    for k, v in plain.items():
        mixed[k + "_plain"] = dict(v, losses=v["losses"] * (1 - weight))
    return mixed


class SFTLoss(BaseLossWrapper, ModuleWithRecords):
    """Wraps a loss and adds moved copies to each training batch: a sample of class
    i is rotated from the centre of i onto that of another class j of the batch
    and labelled j. The wrapped loss's distance and reducer apply.

    Args:
        loss: the loss to wrap.
        miner: an optional miner, run on the batch with the synthetic samples.
        num_targets: target classes per sample (k synthetic samples each).
        transform: "rotation" (SFT) or "translation" (x - c_i + c_j on the
            direction of x, the baseline SFT improves on); both keep norms.
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the
            next quarter.
        warmup_iterations: iterations without augmentation (default: half of
            total_iterations; 0 augments from the first one). This or
            total_iterations is required.
        ramp_iterations: iterations of the ramp (default: a quarter of
            total_iterations, else 0).
    """

    def __init__(
        self,
        loss,
        miner=None,
        num_targets=1,
        transform="rotation",
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        **kwargs,
    ):
        super().__init__(loss=loss, **kwargs)
        if isinstance(num_targets, bool) or not (
            isinstance(num_targets, int) and num_targets >= 1
        ):
            raise ValueError(f"num_targets must be an int >= 1, got {num_targets!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}: {transform!r}")
        schedule = (total_iterations, warmup_iterations, ramp_iterations)
        for name, v in zip(("total", "warmup", "ramp"), schedule):
            if not (v is None or (type(v) is int and v >= 0)):
                raise ValueError(f"{name}_iterations takes None or an int >= 0: {v!r}")
        if total_iterations is None and warmup_iterations is None:
            raise ValueError(
                "pass total_iterations (the length of training: augmentation starts "
                "half-way and ramps up over the next quarter) or warmup_iterations "
                "(the iterations before augmentation starts; 0 for at once)"
            )
        if miner is not None and type(loss).__name__ in NO_TUPLES:
            raise ValueError(f"{type(loss).__name__} takes no indices_tuple: no miner")
        reason = UNSUPPORTED_MINERS.get(type(miner).__name__)
        if reason is not None:
            name = type(miner).__name__
            raise ValueError(f"{type(self).__name__} cannot mine with {name}: {reason}")
        if warmup_iterations is None:
            warmup_iterations = total_iterations // 2
        if ramp_iterations is None:
            ramp_iterations = 0 if total_iterations is None else total_iterations // 4
        self.warmup_iterations = warmup_iterations
        self.ramp_iterations = ramp_iterations
        self.loss, self.miner = loss, miner
        self.num_targets, self.transform = num_targets, transform
        self.step = 0  # mirrors the buffer, read without a device sync
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        schedule = [self.warmup_iterations, self.ramp_iterations]
        self.register_buffer("schedule", torch.tensor(schedule))
        self.add_to_recordable_attributes(
            list_of_names=["num_targets", "warmup_iterations", "ramp_iterations"],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=["num_augmented", "current_aug_weight", "mean_center_angle"],
            is_stat=True,
        )

    @staticmethod
    def supported_losses():
        return list(SUPPORTED_LOSSES)

    @classmethod
    def check_loss_support(cls, loss_name):
        if loss_name not in cls.supported_losses():
            reason = UNSUPPORTED_LOSSES.get(loss_name, "it is not a tested loss")
            raise ValueError(f"{cls.__name__} cannot wrap {loss_name}: {reason}")

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("no ref_emb: synthetic samples join the batch itself")
        c_f.labels_required(labels)
        c_f.check_shapes(embeddings, labels)
        labels = c_f.to_device(labels, embeddings)
        self.reset_stats()
        self.current_aug_weight = weight = self.next_weight()
        n, aug, self.num_augmented = len(embeddings), embeddings[:0], 0
        if weight > 0:
            aug, aug_labels = self.augment(embeddings, labels)
            self.num_augmented = len(aug)
        if len(aug) == 0:
            return self.inner_loss(embeddings, labels, indices_tuple, n)
        all_embeddings = torch.cat([embeddings, aug])
        all_labels = torch.cat([labels, aug_labels.to(labels.dtype)])
        loss = self.inner_loss(all_embeddings, all_labels, indices_tuple, n)
        if weight < 1:
            plain = self.inner_loss(embeddings, labels, indices_tuple, n)
            loss = _mix(plain, loss, weight)
        return loss

    def next_weight(self):
        """The augmented loss's weight at this call. A call in training mode with
        gradients enabled counts as one iteration; others augment nothing."""
        if not (self.training and torch.is_grad_enabled()):
            return 0.0
        self.step += 1
        self.iteration.fill_(self.step)
        t = self.step - self.warmup_iterations
        if t <= 0:
            return 0.0
        return min(1.0, t / self.ramp_iterations) if self.ramp_iterations else 1.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "schedule")
        if saved is not None and saved.tolist() != self.schedule.tolist():
            raise ValueError(
                f"the state's schedule (warmup, ramp) is {saved.tolist()}, but this "
                f"{type(self).__name__} was built with {self.schedule.tolist()}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.step = int(self.iteration)

    def inner_loss(self, embeddings, labels, indices_tuple, n):
        """The wrapped loss on a batch whose first n rows are real."""
        tuples = self.create_indices_tuple(embeddings, labels, indices_tuple, n)
        return self.loss(embeddings, labels, tuples)

    def target_scores(self, embeddings, center_labels):
        """(N, K) scores in [0, 1) ranking each sample's target classes: random."""
        return torch.rand(len(embeddings), len(center_labels), device=embeddings.device)

    def augment(self, embeddings, labels):
        """Up to ``num_targets`` moved copies of each sample whose class has a batch
        centre, each onto another class's centre, with that class's label."""
        unit, _ = _unit(embeddings.detach().to(_compute_dtype(embeddings.dtype)))
        center_labels, centers, _ = _batch_class_centers(unit, labels)
        scores = self.target_scores(embeddings, center_labels)
        move = MOVES[self.transform]
        aug, _, src, dst = _transform(
            embeddings, labels, center_labels, centers, scores, move, self.num_targets
        )
        if self.collect_stats and len(aug) > 0:
            cos = _inner(centers[src], centers[dst]).clamp(-1, 1)
            self.mean_center_angle = math.degrees(torch.acos(cos).mean().item())
        return aug, center_labels[dst]

    def create_indices_tuple(self, embeddings, labels, indices_tuple, n):
        """The miner's tuples on the batch, plus ``indices_tuple`` (mined on the n
        real rows). Without a miner, ``indices_tuple`` plus, for each synthetic row,
        as many tuples as it holds per real row (at least one): its hardest
        partners by the wrapped loss's distance, the farthest positives and the
        nearest negatives."""
        if self.miner is not None:
            mined = self.miner(embeddings, labels)
            if indices_tuple is None:
                return mined
            if len(indices_tuple) != len(mined):
                pairs = len(mined) == 4
                convert = lmu.convert_to_pairs if pairs else lmu.convert_to_triplets
                indices_tuple = convert(indices_tuple, labels)
            return c_f.concatenate_indices_tuples(mined, indices_tuple)
        if indices_tuple is None or len(labels) == n:
            return indices_tuple
        distance = getattr(self.loss, "distance", None) or LpDistance()
        with torch.no_grad():
            farther = distance(embeddings[n:], embeddings)
        farther = -farther if distance.is_inverted else farther
        same = labels[n:].unsqueeze(1) == labels.unsqueeze(0)
        other = ~same
        rows = torch.arange(len(labels) - n, device=labels.device)
        same[rows, rows + n] = False  # not itself

        # as many per synthetic row as the set holds per real row; the remainder
        # goes to the rows whose nearest negative is nearest
        nearest = farther.masked_fill(~other, float("inf")).min(dim=1).values
        # each row's place in that order, ties to the lower row (sorts are not
        # stable on CUDA in torch < 1.9)
        before = nearest.unsqueeze(0) < nearest.unsqueeze(1)
        tie = (nearest.unsqueeze(0) == nearest.unsqueeze(1)) & (
            rows < rows.unsqueeze(1)
        )
        place = (before | tie).sum(dim=1)

        def hardest(scores, allowed, mined):
            base, remainder = divmod(int(round(len(mined) * len(rows) / n)), len(rows))
            count = base + (place < remainder).long()
            columns, valid = _top_columns(scores, allowed, base + (remainder > 0))
            turn = torch.arange(columns.shape[1], device=rows.device).unsqueeze(0)
            return columns, valid & (turn < count.unsqueeze(1))

        p, has_p = hardest(farther, same, indices_tuple[0])
        q, has_q = hardest(-farther, other, indices_tuple[-1])
        anchors = (rows + n).unsqueeze(1)
        if len(indices_tuple) == 4:
            a1, a2 = anchors.expand_as(p)[has_p], anchors.expand_as(q)[has_q]
            extra = a1, p[has_p], a2, q[has_q]
        else:  # the i-th hardest negative with the positives in turn, hardest first
            positives = has_p.sum(dim=1, keepdim=True)
            turn = torch.arange(q.shape[1], device=q.device).unsqueeze(0)
            p = p.gather(1, turn % positives.clamp(min=1))
            valid = has_q & (positives > 0)
            extra = anchors.expand_as(valid)[valid], p[valid], q[valid]
        return c_f.concatenate_indices_tuples(indices_tuple, extra)
