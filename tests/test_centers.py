import pytest
import torch

import pml_sft
from pml_sft import BatchClassCenters, MovingAverageClassCenters
from pml_sft.contrib import DatasetClassCenters, ProxyClassCenters

from .helpers import DEVICE, tol, unit


def _batch(dtype, labels, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = unit(torch.randn(len(labels), d, generator=g, dtype=torch.float64))
    return x.to(dtype=dtype, device=DEVICE), torch.tensor(labels, device=DEVICE)


def _loop_means(x, labels):
    out = {}
    for label in labels.unique().tolist():
        out[label] = unit(x[labels == label].double().mean(0))
    return out


def test_batch_centers_are_normalised_class_means(dtype):
    labels = [7, 7, 7, -3, -3, 1000, 1000, 1000, 1000, 5]
    x, y = _batch(dtype, labels)
    result = BatchClassCenters()(x, y)
    expected = _loop_means(x, y)
    assert sorted(result.labels.tolist()) == [-3, 7, 1000]  # 5 has one sample only
    for row, label in enumerate(result.labels.tolist()):
        assert torch.allclose(
            result.centers[row].double(), expected[label], atol=tol(dtype) * 10
        )
    for i, label in enumerate(labels):
        row = result.sample_rows[i].item()
        assert (row == -1) if label == 5 else (result.labels[row].item() == label)
    assert result.in_batch.all()


def test_batch_centers_min_samples_and_zero_mean():
    x, y = _batch(torch.float64, [0, 0, 1, 1, 2])
    x[3] = -x[2]  # class 1 has mean zero: no direction, no centre
    result = BatchClassCenters(min_samples=1)(x, y)
    assert result.labels.tolist() == [0, 2]
    assert result.sample_rows.tolist() == [0, 0, -1, -1, 1]


def test_half_precision_centers_accumulate_in_float32():
    # half rows are summed in float32 (the upstream _class_sums), so the centres are
    # float32, as exact as the rows allow; the augmenters pass float32 unit rows
    # for half embeddings (BaseAugmenter.directions)
    for dtype in (torch.float16, torch.bfloat16):
        x, y = _batch(dtype, [0] * 6 + [1] * 6, d=8)
        direct = BatchClassCenters()(x, y)
        assert direct.centers.dtype == torch.float32
        expected = _loop_means(x.double(), y)
        for row in range(2):
            assert torch.allclose(
                direct.centers[row].double(), expected[row], atol=1e-6
            )
    seen = []

    class Recording(BatchClassCenters):
        def compute(self, embeddings, labels, include_absent=True):
            result = super().compute(embeddings, labels, include_absent)
            seen.append((embeddings.dtype, result.centers))
            return result

    pml_sft.SphericalFeatureTransform(centers=Recording())(x, y)
    rows_dtype, centres = seen[0]
    assert rows_dtype == torch.float32 and centres.dtype == torch.float32
    expected = _loop_means(unit(x.double()), y)  # the half rows, renormalised
    for row in range(2):
        assert torch.allclose(centres[row].double(), expected[row], atol=1e-6)


def test_moving_average_update_rule():
    centres = MovingAverageClassCenters(
        num_classes=4, embedding_size=5, momentum=0.75
    ).to(DEVICE)
    x1, y1 = _batch(torch.float32, [0, 0, 2], seed=1)
    first = centres(x1, y1)
    m1 = _loop_means(x1, y1)
    assert first.labels.tolist() == [0, 2]
    assert torch.allclose(first.centers[0].double(), m1[0], atol=1e-6)
    x2, y2 = _batch(torch.float32, [0, 3, 3], seed=2)
    second = centres(x2, y2)
    m2 = _loop_means(x2, y2)
    expected0 = unit(0.75 * m1[0] + 0.25 * m2[0])
    assert second.labels.tolist() == [0, 2, 3]
    assert torch.allclose(second.centers[0].double(), expected0, atol=1e-6)
    assert torch.allclose(second.centers[1].double(), m1[2], atol=1e-6)
    assert second.in_batch.tolist() == [True, False, True]
    assert second.sample_rows.tolist() == [0, 2, 2]
    assert centres.num_updates.tolist() == [2, 0, 1, 1]
    only_batch = centres(x2, y2, include_absent=False)
    assert only_batch.labels.tolist() == [0, 3]


def test_moving_average_state_follows_to_and_state_dict():
    centres = MovingAverageClassCenters(3, 5).to(DEVICE)
    x, y = _batch(torch.float32, [0, 1, 1])
    centres(x, y)
    state = centres.state_dict()
    assert set(state) >= {"centers", "num_updates"}
    other = MovingAverageClassCenters(3, 5).to(DEVICE)
    other.load_state_dict(state)
    assert torch.equal(other.centers, centres.centers)
    assert other.to(torch.float64).centers.dtype == torch.float64
    with pytest.raises(ValueError, match="num_classes=4, embedding_size=5"):
        MovingAverageClassCenters(4, 5).load_state_dict(state)
    with pytest.raises(ValueError, match="embedding_size=6"):
        MovingAverageClassCenters(3, 6).load_state_dict(state)


def test_moving_average_frozen():
    # a frozen table that knows no centre would silently give no augmentation
    centres = MovingAverageClassCenters(3, 5, update=False).to(DEVICE)
    x, y = _batch(torch.float32, [0, 1, 1])
    with pytest.raises(ValueError, match="knows no centre and does not update"):
        centres(x, y)
    trained = MovingAverageClassCenters(3, 5).to(DEVICE)
    trained(x, y)
    centres.load_state_dict(trained.state_dict())
    assert len(centres(x, y)) == 2
    assert torch.equal(centres.num_updates, trained.num_updates)  # not updated


def test_moving_average_follows_eval_mode():
    centres = MovingAverageClassCenters(3, 5).to(DEVICE)
    x, y = _batch(torch.float32, [0, 1, 1])
    centres(x, y)
    before = centres.centers.clone()
    centres.eval()
    centres(x * -1, y)
    assert torch.equal(centres.centers, before) and centres.num_updates.sum() == 2
    with pytest.raises(ValueError, match="training=False"):
        MovingAverageClassCenters(3, 5).to(DEVICE).eval()(x, y)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0, 10**12]])
def test_moving_average_labels_out_of_range(labels):
    x, y = _batch(torch.float32, labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        MovingAverageClassCenters(3, 5).to(DEVICE)(x, y)


def test_center_input_errors():
    x, y = _batch(torch.float32, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="4 entries but there are 3"):
        BatchClassCenters()(x[:3], y)
    with pytest.raises(TypeError, match="integer"):
        BatchClassCenters()(x, y.float())
    with pytest.raises(ValueError, match="embedding_size=6"):
        MovingAverageClassCenters(3, 6).to(DEVICE)(x, y)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        BatchClassCenters()(x, y)
    for bad in (dict(momentum=1.0), dict(momentum=-0.1), dict(num_classes=0)):
        kwargs = dict(num_classes=3, embedding_size=4)
        kwargs.update(bad)
        with pytest.raises(ValueError):
            MovingAverageClassCenters(**kwargs)
    with pytest.raises(ValueError, match="min_samples"):
        BatchClassCenters(min_samples=0)


def test_empty_batch():
    x = torch.zeros(0, 5, device=DEVICE)
    y = torch.zeros(0, dtype=torch.long, device=DEVICE)
    assert len(BatchClassCenters()(x, y)) == 0
    assert len(MovingAverageClassCenters(3, 5).to(DEVICE)(x, y)) == 0


def test_dataset_centers_are_the_class_means_of_the_full_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.arange(6).repeat(5)
    centers = DatasetClassCenters(num_classes=8, embedding_size=5)
    centers.fit(x, y)
    unit_x = torch.nn.functional.normalize(x, dim=1)
    for c in range(6):
        expected = torch.nn.functional.normalize(unit_x[y == c].mean(0), dim=0)
        assert torch.allclose(centers.centers[c].double(), expected, atol=1e-6)
    assert centers.fitted.tolist() == [True] * 6 + [False] * 2
    # a batch reads them (no update): its classes, or every fitted class
    batch_x, batch_y = x[:4].float(), torch.tensor([0, 0, 3, 7])
    result = centers(batch_x, batch_y, include_absent=False)
    assert result.labels.tolist() == [0, 3] and result.sample_rows.tolist() == [
        0,
        0,
        1,
        -1,
    ]
    result = centers(batch_x, batch_y, include_absent=True)
    assert result.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert result.in_batch.tolist() == [True, False, False, True, False, False]
    before = centers.centers.clone()
    centers(torch.randn(4, 5), batch_y)
    assert torch.equal(centers.centers, before)
    # a new pass replaces everything; classes absent from it lose their centre
    centers.fit(x[y < 3], y[y < 3])
    assert centers.fitted.tolist() == [True] * 3 + [False] * 5
    with pytest.raises(ValueError, match="labels must lie in"):
        centers.fit(x, y + 5)
    with pytest.raises(ValueError, match="embedding_size=5"):
        centers.fit(torch.randn(3, 4), torch.arange(3))


def test_proxy_centers_follow_the_loss_proxies():
    from pytorch_metric_learning import losses

    loss = losses.ProxyAnchorLoss(num_classes=5, embedding_size=4)
    centers = ProxyClassCenters(loss)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 2, 2, 4, 4])
    result = centers(x, y, include_absent=True)
    expected = torch.nn.functional.normalize(loss.proxies.detach(), dim=1)
    assert torch.allclose(result.centers, expected) and len(result) == 5
    assert result.sample_rows.tolist() == [0, 0, 2, 2, 4, 4]
    with torch.no_grad():
        loss.proxies.mul_(-1)
    assert torch.allclose(centers(x, y).centers, -expected)
    assert [
        n
        for n, _ in pml_sft.FeatureTransformLoss(
            loss,
            pml_sft.SphericalFeatureTransform(centers=centers),
            warmup_iterations=0,
        ).named_parameters()
    ] == [
        "loss.proxies"
    ]  # the proxies stay the loss's parameters, once
    arcface = losses.ArcFaceLoss(num_classes=5, embedding_size=4)
    result = ProxyClassCenters(arcface)(x, y)
    assert torch.allclose(
        result.centers,
        torch.nn.functional.normalize(arcface.W.detach().T, dim=1),
    )
    with pytest.raises(TypeError, match="no class proxies"):
        ProxyClassCenters(losses.ContrastiveLoss())
