import unittest

import torch
from pytorch_metric_learning.losses import (
    ContrastiveLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    SFTLoss,
    TripletMarginLoss,
)
from pytorch_metric_learning.losses.sft_loss import batch_class_centers, rotate
from pytorch_metric_learning.miners import MultiSimilarityMiner

from .. import TEST_DEVICE, TEST_DTYPES


def reflection(u):
    u = u / u.norm()
    return torch.eye(len(u), dtype=torch.float64) - 2 * torch.outer(u, u)


def rotation_matrix(a, b):
    """The minimal rotation taking unit a to unit b as an explicit float64 matrix: two
    reflections, a -> m and m -> b, with m = (a + b) / |a + b|."""
    a, b = a.double(), b.double()
    if torch.equal(a, b):
        return torch.eye(len(a), dtype=torch.float64)
    m = (a + b) / (a + b).norm()
    return reflection(m - b) @ reflection(a - m)


def unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def tolerance(dtype):
    return {torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]


class TestSFTLoss(unittest.TestCase):
    def test_rotate(self):
        torch.manual_seed(0)
        for dtype in TEST_DTYPES:
            x, a, b = torch.randn(3, 20, 16, dtype=torch.float64)
            a, b = unit(a), unit(b)
            b[0] = -a[0]  # antipodal: a half-turn
            b[1] = -unit(a[1] + 1e-3 * b[1:2])[0]  # nearly antipodal: plane form
            b[2] = a[2]  # identical: the identity
            args = [t.to(TEST_DEVICE, dtype) for t in (x, a, b)]
            out = rotate(*args).double().cpu()
            x, a, b = (
                t.double().cpu() for t in args
            )  # the reference sees the rounding
            a, b = unit(a), unit(b)
            tol = tolerance(dtype)
            for i in range(1, 20):
                expected = rotation_matrix(a[i], b[i]) @ x[i]
                self.assertTrue(torch.allclose(out[i], expected, atol=tol * 10))
            maps_src_to_dst = rotate(args[1], args[1], args[2]).double().cpu()
            self.assertTrue(torch.allclose(maps_src_to_dst, b, atol=tol * 10))
            self.assertTrue(torch.allclose(out.norm(dim=1), x.norm(dim=1), rtol=tol))

    def test_batch_class_centers(self):
        for dtype in TEST_DTYPES:
            x = unit(torch.randn(7, 8, dtype=torch.float64))
            labels = torch.tensor([3, 1, 3, 1, 1, 5, 3])
            center_labels, centers, rows = batch_class_centers(
                x.to(TEST_DEVICE, dtype), labels.to(TEST_DEVICE)
            )
            self.assertEqual(center_labels.tolist(), [1, 3])  # class 5: one sample
            self.assertEqual(rows.tolist(), [1, 0, 1, 0, 0, -1, 1])
            for row, c in enumerate([1, 3]):
                expected = unit(x[labels == c].mean(dim=0, keepdim=True))[0]
                self.assertTrue(
                    torch.allclose(centers[row].double().cpu(), expected, atol=1e-3)
                )

    def test_loss_equals_reference(self):
        # with 3 classes and num_targets=2, every sample is rotated onto both other
        # classes, so the enlarged batch is known without the random draws
        torch.manual_seed(1)
        for dtype in TEST_DTYPES:
            for inner in [MultiSimilarityLoss(), TripletMarginLoss(margin=0.5)]:
                x = torch.randn(12, 8, dtype=torch.float64)
                labels = torch.arange(3).repeat_interleave(4)
                centers = unit(
                    torch.stack([unit(x)[labels == c].mean(0) for c in range(3)])
                )
                rows, aug_labels = [], []
                for i in range(12):
                    for c in range(3):
                        if c != labels[i]:
                            R = rotation_matrix(centers[labels[i]], centers[c])
                            rows.append(R @ unit(x)[i])
                            aug_labels.append(c)
                all_x = torch.cat([x, torch.stack(rows)])
                all_labels = torch.cat([labels, torch.tensor(aug_labels)])
                expected = inner(all_x, all_labels)
                loss_func = SFTLoss(inner, num_targets=2, warmup_iterations=0)
                emb = x.to(TEST_DEVICE, dtype).requires_grad_()
                loss = loss_func(emb, labels.to(TEST_DEVICE))
                loss.backward()
                rtol = 1e-2 if dtype == torch.float16 else 1e-4
                self.assertTrue(torch.isclose(loss.double().cpu(), expected, rtol=rtol))
                self.assertEqual(loss_func.num_augmented, 24)
                self.assertTrue(torch.isfinite(emb.grad).all())

    def test_schedule(self):
        for dtype in TEST_DTYPES:
            inner = ContrastiveLoss()
            loss_func = SFTLoss(inner, total_iterations=8)  # warm-up 4, ramp 2
            emb = torch.randn(16, 8, device=TEST_DEVICE, dtype=dtype)
            labels = torch.arange(4).repeat_interleave(4)
            plain = inner(emb, labels)
            weights, changed = [], []
            for _ in range(8):
                loss = loss_func(emb, labels)
                weights.append(loss_func.current_aug_weight)
                changed.append(not torch.isclose(loss, plain))
            self.assertEqual(weights, [0, 0, 0, 0, 0.5, 1, 1, 1])
            self.assertEqual(changed, [False] * 4 + [True] * 4)
            loss_func.eval()
            self.assertTrue(torch.isclose(loss_func(emb, labels), plain))
            self.assertEqual(int(loss_func.iteration), 8)

    def test_miner_and_outer_tuples(self):
        for dtype in TEST_DTYPES:
            emb = torch.randn(16, 8, device=TEST_DEVICE, dtype=dtype)
            emb.requires_grad_()
            labels = torch.arange(4).repeat_interleave(4)
            outer = (torch.tensor([0]), torch.tensor([1]), torch.tensor([4]))
            for miner in [None, MultiSimilarityMiner()]:
                loss_func = SFTLoss(TripletMarginLoss(), miner, warmup_iterations=0)
                loss = loss_func(emb, labels, outer)
                loss.backward()
                self.assertTrue(torch.isfinite(loss) and loss > 0)
                self.assertEqual(loss_func.num_augmented, 16)

    def test_refusals(self):
        with self.assertRaises(ValueError):
            SFTLoss(NPairsLoss(), warmup_iterations=0)
        with self.assertRaises(ValueError):
            SFTLoss(ContrastiveLoss(), num_targets=0, warmup_iterations=0)

    def test_plateau_start(self):
        # no schedule: no augmentation until the loss stops falling (here at once:
        # the embeddings do not change), then a ramp over half the steps so far
        emb = torch.randn(16, 8, device=TEST_DEVICE, requires_grad=True)
        labels = torch.arange(4).repeat_interleave(4)
        loss_func = SFTLoss(ContrastiveLoss())
        weights = []
        for _ in range(260):
            loss_func(emb, labels)
            weights.append(loss_func.current_aug_weight)
        self.assertEqual(max(weights[:200]), 0)
        self.assertEqual(loss_func.warmup_iterations, 200)
        self.assertEqual(weights[200:202], [0.01, 0.02])
