"""Which PML losses, miners, reducers and distances compose with the loss wrapper.

The lists are generated from PML's own exports, so a class PML adds later is tested
too. Every class either trains through :class:`pml_sft.SFTLoss` (finite loss,
gradients reach the embeddings, a few optimiser steps lower the loss on a toy
problem) or is refused with a clear error that says why.

``python -m tests.compat_matrix`` prints the matrix as markdown (docs/composability.md).
"""

import copy
import inspect
import sys

import torch
from pytorch_metric_learning import distances, losses, miners, reducers

import pml_sft
from pml_sft.upstream import sft_loss as upstream

NUM_CLASSES, PER_CLASS, INPUT_DIM, EMBEDDING_SIZE = 4, 4, 12, 8

# Constructor arguments for PML classes whose parameters have no defaults.
LOSS_KWARGS = {
    "ArcFaceLoss": lambda: dict(num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE),
    "CosFaceLoss": lambda: dict(num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE),
    "CrossBatchMemory": lambda: dict(
        loss=losses.ContrastiveLoss(), embedding_size=EMBEDDING_SIZE, memory_size=128
    ),
    "LargeMarginSoftmaxLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "ManifoldLoss": lambda: {"l": EMBEDDING_SIZE},
    "MultipleLosses": lambda: dict(
        losses=[losses.ContrastiveLoss(), losses.MultiSimilarityLoss()]
    ),
    "NormalizedSoftmaxLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "P2SGradLoss": lambda: dict(
        descriptors_dim=EMBEDDING_SIZE, num_classes=NUM_CLASSES
    ),
    "ProxyAnchorLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "ProxyNCALoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "RankedListLoss": lambda: dict(margin=0.4, Tn=10),
    "SelfSupervisedLoss": lambda: dict(loss=losses.ContrastiveLoss()),
    # (exported by PML in the test process: tests/__init__.py)
    "SFTLoss": lambda: dict(loss=losses.ContrastiveLoss(), warmup_iterations=0),
    "SoftTripleLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "SphereFaceLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
    "SubCenterArcFaceLoss": lambda: dict(
        num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE
    ),
}
REDUCER_KWARGS = {
    "ClassWeightedReducer": lambda: dict(weights=torch.linspace(0.5, 2, NUM_CLASSES)),
    "MultipleReducers": lambda: dict(
        reducers={"pos_loss": reducers.SumReducer()},
        default_reducer=reducers.MeanReducer(),
    ),
    "ThresholdReducer": lambda: dict(low=0.0),
}
# Reducers that need a loss that reports what they use.
REDUCER_LOSS = {"DivisorReducer": losses.MarginLoss}
# Losses that must use a distance of their own kind in the distance matrix.
DISTANCE_LOSS = losses.ContrastiveLoss

# The wrappers take the losses of one explicit list and refuse every other one,
# those of UNSUPPORTED_LOSSES with their reason.
SUPPORTED_LOSSES = upstream.SUPPORTED_LOSSES


def refusal(name):
    """What the wrappers' error says for a loss outside SUPPORTED_LOSSES."""
    reason = upstream.UNSUPPORTED_LOSSES.get(name, "it is not a tested loss")
    return f"cannot wrap {name}: {reason}"


REFUSED_INNER_MINERS = {
    name: "cannot mine" for name in pml_sft.losses.UNSUPPORTED_MINERS
}
# PML classes that fail the same harness without the wrapper (upstream bugs). The
# wrapped loss is still checked for one step; the test fails once PML fixes the bug,
# so the entry can be removed.
KNOWN_PML_BUGS = {
    "DynamicSoftMarginLoss": "PML 2.9.0 bug: its histogram (hist_) keeps the autograd "
    "graph of the previous step, so the second backward fails even without the wrapper",
}
# Exported classes that are not something to plug into a loss.
NOT_APPLICABLE = {
    "BatchedDistance": "a helper that feeds chunks of a distance matrix to a callback; "
    "losses and miners cannot use it as their distance",
}


def _exported(module, base):
    out = {}
    for name, obj in vars(module).items():
        if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
            continue
        if name.startswith(("Base", "Generic")) or inspect.isabstract(obj):
            continue
        if base is not None and not issubclass(obj, base):
            continue
        out[name] = obj
    return dict(sorted(out.items()))


def exported_losses():
    return _exported(losses, None)


def exported_miners():
    return _exported(miners, miners.BaseMiner)


def exported_reducers():
    return _exported(reducers, reducers.BaseReducer)


def exported_distances():
    return _exported(distances, None)


def build(cls, kwargs_table):
    """Instantiate ``cls`` with the arguments it needs; unknown classes are tried with
    the usual argument names so that a class PML adds later is still exercised."""
    if cls.__name__ in kwargs_table:
        return cls(**kwargs_table[cls.__name__]())
    guesses = dict(
        num_classes=NUM_CLASSES,
        embedding_size=EMBEDDING_SIZE,
        descriptors_dim=EMBEDDING_SIZE,
        loss=losses.ContrastiveLoss(),
    )
    params = inspect.signature(cls.__init__).parameters
    required = [
        p
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name != "self"
    ]
    missing = [p.name for p in required if p.name not in guesses]
    if missing:
        raise RuntimeError(
            f"add constructor arguments for {cls.__name__} ({missing}) to tests/compat_matrix.py"
        )
    return cls(**{p.name: guesses[p.name] for p in required})


def toy_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(NUM_CLASSES, INPUT_DIM, generator=g)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    inputs = means[labels] + torch.randn(len(labels), INPUT_DIM, generator=g)
    model = torch.nn.Linear(INPUT_DIM, EMBEDDING_SIZE)
    torch.nn.init.normal_(model.weight, generator=g)
    torch.nn.init.zeros_(model.bias)
    return model, inputs, labels


# A batch laid out as (anchor, positive, negative) triplets of the toy problem, for
# EmbeddingsAlreadyPackagedAsTriplets: sample s of class c is row c * PER_CLASS + s.
TRIPLET_LAYOUT = [0, 1, 7, 4, 5, 11, 8, 9, 15, 12, 13, 3, 2, 3, 6]


def check_trains(
    wrapped,
    steps=25,
    lr=0.02,
    outer_miner=None,
    order=None,
    require_decrease=True,
    check_effect=True,
):
    """Finite loss, gradients reach the embeddings, and optimiser steps lower the loss.

    Works for plain PML losses too (to tell upstream bugs from the wrapper's).

    The evaluations before and after training are of the objective trained (the
    augmented loss: a training call on detached embeddings, whose state is then
    restored; a call under no_grad would give the plain loss) with the same target
    draws (the generator is re-seeded), so the comparison is of one objective.
    Returns (loss before, loss after).
    """
    torch.manual_seed(0)
    model, inputs, labels = toy_problem()
    if order is not None:
        inputs, labels = inputs[order], labels[order]
    generator = torch.Generator().manual_seed(0)
    is_wrapper = isinstance(wrapped, upstream.SFTLoss)
    if isinstance(wrapped, pml_sft.FeatureTransformLoss):
        wrapped.augmenter.generator = generator
    elif is_wrapper:
        wrapped.generator = generator
    params = list(model.parameters()) + list(wrapped.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)

    def evaluate():
        generator.manual_seed(123)
        torch.manual_seed(123)
        state = copy.deepcopy(wrapped.state_dict())
        emb = model(inputs).detach()
        indices = outer_miner(emb, labels) if outer_miner is not None else None
        value = wrapped(emb, labels, indices)
        wrapped.load_state_dict(state)  # evaluation leaves no trace (centres, counters)
        return float(value)

    before = evaluate()
    for step in range(steps):
        optimizer.zero_grad()
        emb = model(inputs)
        emb.retain_grad()
        indices = outer_miner(emb, labels) if outer_miner is not None else None
        loss = wrapped(emb, labels, indices)
        if not torch.isfinite(loss):
            raise AssertionError(f"loss is not finite at step {step}: {loss}")
        loss.backward()
        if step == 0:
            if is_wrapper and check_effect:
                check_augmentation_matters(wrapped, emb.detach(), labels, indices)
            if emb.grad is None or not torch.isfinite(emb.grad).all():
                raise AssertionError("no finite gradient reached the embeddings")
            if emb.grad.abs().sum() == 0:
                raise AssertionError("the gradient reaching the embeddings is zero")
            if is_wrapper and wrapped.num_augmented == 0:
                raise AssertionError("nothing was augmented")
        optimizer.step()
    after = evaluate()
    # (a loss already at zero, e.g. few easy triplets, has nothing left to lower)
    if require_decrease and not (after < before or after == before == 0):
        raise AssertionError(
            f"training did not lower the loss: {before:.4g} -> {after:.4g}"
        )
    return before, after


def check_augmentation_matters(wrapped, emb, labels, indices):
    """The wrapped loss's gradient points elsewhere than the inner loss's on the
    plain batch: the embeddings' (cosine below 1 - 1e-6), or else the wrapped
    loss's own parameters' (e.g. proxies, which Spherical Embedding Expansion's
    detached points train) by a clear margin (cosine below 0.999). Otherwise
    augmentation would be a silent no-op for training (as NPairsLoss was, and DAS
    on per-row losses, which only rescale the one and turn the other by about
    1e-5). The parameters' gradients of the training step are left as they were."""
    params = list(wrapped.loss.parameters())
    kept = [None if p.grad is None else p.grad.clone() for p in params]
    outcomes = []
    for loss_fn in (wrapped, wrapped.loss):
        state = copy.deepcopy(wrapped.state_dict())
        torch.manual_seed(7)
        for p in params:
            p.grad = None
        x = emb.clone().requires_grad_()
        loss_fn(x, labels, indices).backward()
        own = [
            torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten()
            for p in params
        ]
        outcomes.append((x.grad.flatten(), torch.cat(own) if own else None))
        wrapped.load_state_dict(state)
    for p, grad in zip(params, kept):
        p.grad = grad
    (aug_emb, aug_own), (plain_emb, plain_own) = outcomes

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)

    # the direction, not the value: a rescaled gradient (a detached copy that
    # shares no loss term) is a no-op for training
    cos = cosine(aug_emb, plain_emb)
    if cos < 1 - 1e-6:
        return
    if aug_own is not None and cosine(aug_own, plain_own) < 0.999:
        return
    raise AssertionError(
        f"augmentation left the gradient's direction as it was (cosine {cos:.8f})"
    )


# the wrappers whose augmenters apply to every supported loss (Proxy Synthesis
# applies to proxy losses only: tests/test_family.py)
WRAPPERS = {
    "SFTLoss": pml_sft.SFTLoss,
    "EmbeddingExpansionLoss": pml_sft.EmbeddingExpansionLoss,
    "SymmetricalSynthesisLoss": pml_sft.SymmetricalSynthesisLoss,
    "DenselyAnchoredSamplingLoss": lambda loss, **kwargs: (
        pml_sft.DenselyAnchoredSamplingLoss(loss, NUM_CLASSES, EMBEDDING_SIZE, **kwargs)
    ),
    "EmbeddingMixupLoss": pml_sft.EmbeddingMixupLoss,
    "ClassCovarianceSamplingLoss": lambda loss, **kwargs: (
        pml_sft.ClassCovarianceSamplingLoss(loss, NUM_CLASSES, EMBEDDING_SIZE, **kwargs)
    ),
    # (4 points: the toy embeddings have 8 dimensions)
    "SphericalEmbeddingExpansionLoss": lambda loss, **kwargs: (
        pml_sft.SphericalEmbeddingExpansionLoss(loss, num_points=4, **kwargs)
    ),
}


def loss_outcome(name, wrapper="SFTLoss"):
    """'works' or 'refused: <message>' for the loss named ``name``."""
    cls = exported_losses()[name]
    inner = build(cls, LOSS_KWARGS)
    try:
        wrapped = WRAPPERS[wrapper](inner, warmup_iterations=0)
    except ValueError as e:
        return f"refused: {e}"
    if name in KNOWN_PML_BUGS:
        # (its second backward fails, so the no-op check cannot run before it)
        check_trains(wrapped, steps=1, require_decrease=False, check_effect=False)
        return f"works for one step; {KNOWN_PML_BUGS[name]}"
    check_trains(wrapped)
    return "works"


def proxy_synthesis_outcome(name):
    """Proxy Synthesis takes the proxy losses whose proxies it knows."""
    inner = build(exported_losses()[name], LOSS_KWARGS)
    try:
        wrapped = pml_sft.ProxySynthesisLoss(inner, warmup_iterations=0)
    except ValueError as e:
        return f"refused: {e}"
    check_trains(wrapped)
    return "works"


def miner_outcome(name, role):
    """Miner ``name`` as the wrapper's miner ("inner") or the trainer's ("outer")."""
    miner = build(exported_miners()[name], {})
    order = TRIPLET_LAYOUT if name == "EmbeddingsAlreadyPackagedAsTriplets" else None
    inner = losses.TripletMarginLoss(margin=0.5)
    if role == "inner":
        try:
            wrapped = pml_sft.SFTLoss(inner, miner=miner, warmup_iterations=0)
        except ValueError as e:
            return f"refused: {e}"
        check_trains(wrapped)
    else:
        wrapped = pml_sft.SFTLoss(inner, warmup_iterations=0)
        check_trains(wrapped, outer_miner=miner, order=order)
    return "works"


def reducer_outcome(name):
    reducer = build(exported_reducers()[name], REDUCER_KWARGS)
    inner = REDUCER_LOSS.get(name, losses.ContrastiveLoss)(reducer=reducer)
    wrapped = pml_sft.SFTLoss(inner, warmup_iterations=0)
    if name == "DoNothingReducer":
        model, inputs, labels = toy_problem()
        out = wrapped(model(inputs), labels)
        if not isinstance(out, dict):
            raise AssertionError("DoNothingReducer should give the unreduced loss dict")
        total = sum(
            v["losses"].sum() for v in out.values() if torch.is_tensor(v["losses"])
        )
        total.backward()
        return "works (returns the unreduced loss dict, as without the wrapper)"
    check_trains(wrapped)
    return "works"


def distance_outcome(name, variant_kwargs=None):
    if name in NOT_APPLICABLE:
        return f"not applicable: {NOT_APPLICABLE[name]}"
    cls = exported_distances()[name]
    distance = cls(**(variant_kwargs or {}))
    miner = miners.MultiSimilarityMiner(distance=cls(**(variant_kwargs or {})))
    # margins for the kind of distance (ContrastiveLoss's defaults suit distances;
    # with a similarity they leave only positives below 0 with a loss)
    margins = dict(pos_margin=1, neg_margin=0) if distance.is_inverted else {}
    inner = DISTANCE_LOSS(distance=distance, **margins)
    check_trains(pml_sft.SFTLoss(inner, miner=miner, warmup_iterations=0))
    return "works"


def markdown():
    rows = ["| kind | PML class | outcome |", "| --- | --- | --- |"]

    def add(kind, name, fn):
        try:
            outcome = fn()
        except Exception as e:  # report, do not hide
            outcome = f"FAILS: {type(e).__name__}: {e}"
        rows.append(f"| {kind} | `{name}` | {outcome} |")

    for wrapper in WRAPPERS:
        kind = "loss" if wrapper == "SFTLoss" else f"loss ({wrapper})"
        for name in exported_losses():
            add(kind, name, lambda: loss_outcome(name, wrapper))
    for name in exported_losses():
        add("loss (ProxySynthesisLoss)", name, lambda: proxy_synthesis_outcome(name))
    for name in exported_miners():
        add("miner (wrapper's)", name, lambda: miner_outcome(name, "inner"))
        add("miner (trainer's)", name, lambda: miner_outcome(name, "outer"))
    for name in exported_reducers():
        add("reducer", name, lambda: reducer_outcome(name))
    for name in exported_distances():
        add("distance", name, lambda: distance_outcome(name))
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
