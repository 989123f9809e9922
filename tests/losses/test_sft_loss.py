import unittest

import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses.sft_loss import (
    NO_TUPLES,
    SFTLoss,
    _batch_class_centers,
    _rotate,
    _translate,
)
from pytorch_metric_learning.miners import MultiSimilarityMiner, TripletMarginMiner
from pytorch_metric_learning.reducers import DoNothingReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .. import TEST_DEVICE, TEST_DTYPES

CLASSES, PER_CLASS, SIZE = 4, 4, 8
PROXY_LOSSES = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "LargeMarginSoftmaxLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
]


def build(name):
    if name in PROXY_LOSSES:
        return getattr(losses, name)(num_classes=CLASSES, embedding_size=SIZE)
    if name == "P2SGradLoss":
        return losses.P2SGradLoss(SIZE, CLASSES)
    if name == "RankedListLoss":
        return losses.RankedListLoss(margin=0.4, Tn=10)
    if name == "DynamicSoftMarginLoss":  # (its histogram's last bin overflows)
        return losses.DynamicSoftMarginLoss(min_val=-4.0)
    if name == "MultipleLosses":
        return losses.MultipleLosses([losses.ContrastiveLoss(), losses.NCALoss()])
    return getattr(losses, name)()


def rotation_matrix(a, b):
    """The minimal rotation taking unit a to unit b as an explicit float64 matrix: two
    reflections, a -> m and m -> b, with m = (a + b) / |a + b|."""
    a, b = a.double(), b.double()
    m = (a + b) / (a + b).norm()
    eye = torch.eye(len(a), dtype=torch.float64)
    u, w = a - m, m - b
    u, w = u / u.norm(), w / w.norm()
    first = eye - 2 * u.unsqueeze(1) * u.unsqueeze(0)
    return (eye - 2 * w.unsqueeze(1) * w.unsqueeze(0)) @ first


def unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def batch(dtype, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(CLASSES * PER_CLASS, SIZE, dtype=torch.float64) * 3
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    return x.to(TEST_DEVICE, dtype).requires_grad_(), labels.to(TEST_DEVICE)


def tolerance(dtype):
    return {torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]


class TestSFTLoss(unittest.TestCase):
    def test_rotate_and_translate(self):
        torch.manual_seed(0)
        for dtype in TEST_DTYPES:
            x, a, b = torch.randn(3, 20, 16, dtype=torch.float64)
            a, b = unit(a), unit(b)
            b[0] = -a[0]  # antipodal: a half-turn
            b[1] = -unit(a[1] + 1e-3 * b[1:2])[0]  # nearly antipodal: plane form
            b[2] = a[2]  # identical: the identity
            cast = [t.to(TEST_DEVICE, dtype) for t in (x, a, b)]
            compute = torch.float32 if dtype == torch.float16 else dtype
            out = _rotate(*[t.to(compute) for t in cast]).double().cpu()
            x, a, b = (t.double().cpu() for t in cast)  # the rounded inputs
            a, b = unit(a), unit(b)
            tol = tolerance(dtype)
            for i in range(1, 20):
                expected = x[i] if i == 2 else rotation_matrix(a[i], b[i]) @ x[i]
                self.assertTrue(torch.allclose(out[i], expected, atol=tol * 100))
            self.assertTrue(torch.allclose(out.norm(dim=1), x.norm(dim=1), rtol=tol))
            moved = _translate(*[t.to(compute) for t in cast]).double().cpu()
            direction = unit(unit(x) - a + b)
            expected = direction * x.norm(dim=1, keepdim=True)
            self.assertTrue(torch.allclose(moved[3:], expected[3:], atol=tol * 100))

    def test_batch_class_centers(self):
        for dtype in TEST_DTYPES:
            x = unit(torch.randn(7, 8, dtype=torch.float64))
            labels = torch.tensor([3, 1, 3, 1, 1, 5, 3])
            center_labels, centers, rows = _batch_class_centers(
                x.to(TEST_DEVICE, dtype), labels.to(TEST_DEVICE)
            )
            self.assertEqual(center_labels.tolist(), [1, 3])  # class 5: one sample
            self.assertEqual(rows.tolist(), [1, 0, 1, 0, 0, -1, 1])
            for row, c in enumerate([1, 3]):
                expected = unit(x[labels == c].mean(dim=0, keepdim=True))[0]
                got = centers[row].double().cpu()
                self.assertTrue(torch.allclose(got, expected, atol=1e-3))

    def test_loss_equals_reference(self):
        # with 4 classes and num_targets=3, every sample is rotated onto every other
        # class, so the enlarged batch is known without the random draws
        for dtype in TEST_DTYPES:
            for inner in [losses.MultiSimilarityLoss(), losses.TripletMarginLoss()]:
                emb, labels = batch(dtype)
                x, y = emb.detach().double().cpu(), labels.cpu()
                centers = unit(torch.stack([unit(x)[y == c].mean(0) for c in range(4)]))
                rows, aug_labels = [], []
                for i in range(len(x)):
                    for c in range(CLASSES):
                        if c != y[i]:
                            rows.append(
                                rotation_matrix(centers[y[i]], centers[c]) @ x[i]
                            )
                            aug_labels.append(c)
                all_x = torch.cat([x, torch.stack(rows)])
                expected = inner(all_x, torch.cat([y, torch.tensor(aug_labels)]))
                loss_func = SFTLoss(inner, num_targets=3, warmup_iterations=0)
                loss = loss_func(emb, labels)
                loss.backward()
                rtol = 1e-2 if dtype == torch.float16 else 1e-4
                self.assertTrue(torch.isclose(loss.double().cpu(), expected, rtol=rtol))
                self.assertEqual(loss_func.num_augmented, 48)
                self.assertTrue(torch.isfinite(emb.grad).all())

    def test_norms_kept(self):
        for dtype in TEST_DTYPES:
            emb, labels = batch(dtype)
            for transform in ["rotation", "translation"]:
                for inner in [
                    losses.ContrastiveLoss(distance=DotProductSimilarity()),
                    losses.LargeMarginSoftmaxLoss(CLASSES, SIZE).to(TEST_DEVICE),
                ]:
                    loss_func = SFTLoss(inner, None, 3, transform, warmup_iterations=0)
                    aug, _ = loss_func.augment(emb, labels)
                    expected = emb.norm(dim=1).repeat_interleave(3)
                    self.assertTrue(
                        torch.allclose(aug.norm(dim=1), expected, rtol=tolerance(dtype))
                    )

    def test_supported_losses(self):
        # every supported loss, with and without miners and outer tuples: the
        # augmented loss is finite and changes the direction of the gradient
        for dtype in TEST_DTYPES:
            emb, labels = batch(dtype)
            pairs = [t[::7] for t in lmu.get_all_pairs_indices(labels)]
            triplets = [t[::20] for t in lmu.get_all_triplets_indices(labels)]
            for name in SFTLoss.supported_losses():
                miners = [None, MultiSimilarityMiner(), TripletMarginMiner()]
                outer = [None, pairs, triplets]
                if name in NO_TUPLES:
                    miners, outer = [None], [None]
                for miner in miners:
                    for indices_tuple in outer:
                        args = (emb, labels, indices_tuple, miner)
                        self.check_changes_gradient(name, *args)

    def check_changes_gradient(self, name, emb, labels, indices_tuple, miner):
        torch.manual_seed(1)  # a new loss each time, the same proxies
        plain = build(name).to(TEST_DEVICE, emb.dtype)(emb, labels, indices_tuple)
        grad = torch.autograd.grad(plain, emb)[0].flatten().double()
        if not torch.isfinite(grad).all():  # (PNPLoss in float16, without SFTLoss)
            return
        torch.manual_seed(1)
        inner = build(name).to(TEST_DEVICE, emb.dtype)
        loss = SFTLoss(inner, miner, warmup_iterations=0)(emb, labels, indices_tuple)
        self.assertTrue(torch.isfinite(loss), name)
        aug_grad = torch.autograd.grad(loss, emb)[0].flatten().double()
        if emb.dtype != torch.float16:  # (too coarse for saturated losses, NTXent)
            cos = torch.nn.functional.cosine_similarity(grad, aug_grad, 0)
            self.assertLess(cos.item(), 1 - 1e-3, name)

    def test_outer_tuples_gain_the_hardest_per_synthetic_row(self):
        emb, labels = batch(torch.float64)
        loss_func = SFTLoss(losses.ContrastiveLoss(), None, 3, warmup_iterations=0)
        aug, aug_labels = loss_func.augment(emb, labels)
        all_emb, all_labels = torch.cat([emb, aug]), torch.cat([labels, aug_labels])
        n, m = len(emb), len(aug)
        dist = LpDistance()(all_emb).detach()
        other = all_labels.unsqueeze(1) != all_labels.unsqueeze(0)
        nearest = dist.masked_fill(~other, float("inf")).min(dim=1).values[n:]
        busiest = set((nearest.argsort()[:3] + n).tolist())
        for get in [lmu.get_all_pairs_indices, lmu.get_all_triplets_indices]:
            given = [t[: 2 * n + 1] for t in get(labels)]
            kept = loss_func.create_indices_tuple(all_emb, all_labels, given, n)
            for g, k in zip(given, kept):
                self.assertTrue(torch.equal(k[: len(g)], g))
            extra = [t[len(given[0]) :] for t in kept]
            # round(33 * 48 / 16) = 99: 2 per synthetic row, 3 rows get a third
            self.assertEqual(len(extra[0]), 99)
            for j in range(n, n + m):
                mine = extra[0] == j
                self.assertEqual(int(mine.sum()), 3 if j in busiest else 2)
                same = (all_labels == all_labels[j]).nonzero(as_tuple=False)
                same = [i for i in same.flatten().tolist() if i != j]
                farthest = sorted(same, key=lambda i: -dist[j, i])[: int(mine.sum())]
                self.assertEqual(sorted(set(extra[1][mine].tolist())), sorted(farthest))
                negatives = extra[-1][extra[-2] == j]
                self.assertTrue((all_labels[negatives] != all_labels[j]).all())

    def test_schedule_and_do_nothing_reducer(self):
        for dtype in TEST_DTYPES:
            emb, labels = batch(dtype)
            inner = losses.ContrastiveLoss()
            plain = inner(emb, labels)
            loss_func = SFTLoss(inner, total_iterations=8)  # warm-up 4, ramp 2
            weights = []
            for _ in range(8):
                loss = loss_func(emb, labels)
                weights.append(loss_func.current_aug_weight)
                self.assertEqual(bool(torch.isclose(loss, plain)), weights[-1] == 0)
            self.assertEqual(weights, [0, 0, 0, 0, 0.5, 1, 1, 1])
            for evaluation in ["eval", "no_grad"]:
                loss_func.train(evaluation != "eval")
                with torch.set_grad_enabled(evaluation != "no_grad"):
                    self.assertTrue(torch.isclose(loss_func(emb, labels), plain))
            self.assertEqual(int(loss_func.iteration), 8)
            unreduced = losses.ContrastiveLoss(reducer=DoNothingReducer())
            loss_func = SFTLoss(unreduced, total_iterations=8)
            for i in range(12):
                out = loss_func(emb, labels)
                self.assertEqual("pos_loss_plain" in out, i == 4)

    def test_state_dict(self):
        loss_func = SFTLoss(losses.ContrastiveLoss(), total_iterations=8)
        emb, labels = batch(torch.float32)
        for _ in range(5):
            loss_func(emb, labels)
        loaded = SFTLoss(losses.ContrastiveLoss(), total_iterations=8)
        loaded.load_state_dict(loss_func.state_dict())
        loaded(emb, labels)
        self.assertEqual(loaded.current_aug_weight, 1)
        other = SFTLoss(losses.ContrastiveLoss(), total_iterations=100)
        with self.assertRaises(ValueError):
            other.load_state_dict(loss_func.state_dict())

    def test_refusals(self):
        inner = losses.ContrastiveLoss()
        with self.assertRaisesRegex(ValueError, "total_iterations.*warmup_iterations"):
            SFTLoss(inner)
        for wrong in [losses.NPairsLoss(), SFTLoss(inner, warmup_iterations=0)]:
            with self.assertRaises(ValueError):
                SFTLoss(wrong, warmup_iterations=0)
        with self.assertRaises(ValueError):
            SFTLoss(inner, num_targets=0, warmup_iterations=0)
        with self.assertRaises(ValueError):
            SFTLoss(inner, transform="reflection", warmup_iterations=0)
