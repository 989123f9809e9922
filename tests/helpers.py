"""Independent float64 references used by several test files."""

import math
import os

import torch

DEVICE = torch.device(os.environ.get("TEST_DEVICE", "cpu"))
DTYPES = [
    getattr(torch, name)
    for name in os.environ.get("TEST_DTYPES", "float32,float64").split(",")
]


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def tol(dtype):
    return {
        torch.float16: 2e-2,
        torch.bfloat16: 8e-2,
        torch.float32: 1e-5,
        torch.float64: 1e-10,
    }[dtype]


def rotation_matrix(a, b):
    """The minimal rotation carrying unit ``a`` onto unit ``b`` as an explicit D x D
    float64 matrix, built as the exponential of the generator
    theta * (v a^T - a v^T) (independent of the closed form under test)."""
    a = a.double() / a.double().norm()
    b = b.double() / b.double().norm()
    c = torch.clamp(a @ b, -1.0, 1.0)
    w = b - c * a
    if w.norm() < 1e-12:
        if c > 0:
            return torch.eye(a.shape[0], dtype=torch.float64, device=a.device)
        raise ValueError("antipodal: no unique reference")
    v = w / w.norm()
    theta = math.acos(c.item())
    generator = theta * (torch.outer(v, a) - torch.outer(a, v))
    return torch.linalg.matrix_exp(generator)


def rotate_reference(x, src, dst):
    """Row-by-row rotation with explicit matrices (the naive O(N D^2) approach)."""
    return torch.stack(
        [rotation_matrix(a, b) @ xi.double() for xi, a, b in zip(x, src, dst)]
    )


def random_unit(n, d, generator, dtype=torch.float64, device="cpu"):
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype=dtype, device=device)


def fake_emoji_data(num_classes, per_class, size, seed=0):
    """Random images in the format of ``pml_sft.datasets.emoji.prepare``."""
    import numpy as np

    rng = np.random.RandomState(seed)
    shape = (num_classes * per_class, size, size, 3)
    return {
        "images": rng.randint(0, 256, shape).astype(np.uint8),
        "labels": np.repeat(np.arange(num_classes), per_class),
        "class_codes": np.array([f"c{i}" for i in range(num_classes)]),
        "class_names": np.array([f"name {i}" for i in range(num_classes)]),
    }


# benchmarks.family(_tuning) arguments for tiny runs on fake icons: two losses, a
# small CNN on 16 px images, 2 epochs, one worker
TINY_FAMILY_ARGS = [
    "--datasets",
    "icons",
    "--losses",
    "multisimilarity",
    "normsoftmax",
    "--workers",
    "1",
    "--backbone",
    "small_cnn",
    "--pretrained",
    "false",
    "--train-from-block",
    "0",
    "--image-size",
    "16",
    "--epochs",
    "2",
    "--eval-every",
    "2",
    "--batch-size",
    "16",
    "--width",
    "8",
]


def hardest_extra(x, labels, n, mined_pos, mined_neg, triplets, distance=None):
    """By hand, the tuples the wrappers add for the synthetic rows x[n:] to an outer
    indices_tuple of mined_pos positive and mined_neg negative pairs (or of
    mined_pos triplets): per row round(mined * m / n) // m, the remainder to the rows
    whose nearest negative is nearest; partners hardest first by ``distance`` (the
    losses' default LpDistance): farthest positives, nearest negatives; a triplet
    joins the i-th nearest negative with the positives in turn."""
    from pytorch_metric_learning.distances import LpDistance

    distance = distance or LpDistance()
    labels = labels.tolist()
    m = len(labels) - n
    mat = distance(x[n:].detach(), x.detach()).double().cpu()
    far = (-mat if distance.is_inverted else mat).tolist()
    pos = [
        sorted(
            (
                i
                for i in range(len(labels))
                if labels[i] == labels[n + j] and i != n + j
            ),
            key=lambda i: -far[j][i],
        )
        for j in range(m)
    ]
    neg = [
        sorted(
            (i for i in range(len(labels)) if labels[i] != labels[n + j]),
            key=lambda i: far[j][i],
        )
        for j in range(m)
    ]
    order = sorted(
        range(m), key=lambda j: far[j][neg[j][0]] if neg[j] else float("inf")
    )

    def counts(mined):
        base, remainder = divmod(int(round(mined * m / n)), m)
        return [base + (j in order[:remainder]) for j in range(m)]

    if triplets:
        a, p, q = [], [], []
        for j, c in enumerate(counts(mined_pos)):
            if pos[j]:
                ps = pos[j][: min(c, len(pos[j]))]
                for t, negative in enumerate(neg[j][:c]):
                    a.append(n + j), p.append(ps[t % len(ps)]), q.append(negative)
        return a, p, q
    a1, p, a2, q = [], [], [], []
    for j, (cp, cn) in enumerate(zip(counts(mined_pos), counts(mined_neg))):
        a1 += [n + j] * len(pos[j][:cp])
        p += pos[j][:cp]
        a2 += [n + j] * len(neg[j][:cn])
        q += neg[j][:cn]
    return a1, p, a2, q


def run_ranks(worker, out, world):
    """Spawn ``world`` gloo processes running ``worker(rank, port, out)``, each
    saving its results to ``out/rank<r>.pt``; returns them in rank order."""
    import socket

    import pytest
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]
