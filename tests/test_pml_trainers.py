"""The wrapper inside PML's trainers and testers, and the RecallAtK calculator."""

import pytest
import torch
from pytorch_metric_learning import losses, miners, samplers, testers, trainers
from pytorch_metric_learning.utils import common_functions as c_f

import pml_sft

NUM_CLASSES, PER_CLASS, INPUT_DIM, EMB = 6, 8, 10, 8


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, seed, classes=NUM_CLASSES):
        g = torch.Generator().manual_seed(seed)
        means = 1.2 * torch.randn(
            classes, INPUT_DIM, generator=torch.Generator().manual_seed(99)
        )
        self.labels = torch.arange(classes).repeat_interleave(PER_CLASS)
        self.data = means[self.labels] + torch.randn(
            len(self.labels), INPUT_DIM, generator=g
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], self.labels[i]


def _models(classifier=False):
    torch.manual_seed(0)
    models = {
        "trunk": torch.nn.Linear(INPUT_DIM, 16),
        "embedder": torch.nn.Linear(16, EMB),
    }
    if classifier:
        models["classifier"] = torch.nn.Linear(EMB, NUM_CLASSES)
    return models


def _progress(models, dataset):
    """Unmined, unaugmented loss and Recall@1 of the whole training set."""
    with torch.no_grad():
        emb = models["embedder"](models["trunk"](dataset.data))
        loss = losses.MultiSimilarityLoss()(emb, dataset.labels).item()
        unit = torch.nn.functional.normalize(emb, dim=1)
        sim = unit @ unit.T
        sim.fill_diagonal_(-2)
        recall = (dataset.labels[sim.argmax(1)] == dataset.labels).float().mean().item()
    return loss, recall


def _train(trainer_class, loss, mining_funcs=None, classifier=False, epochs=10):
    dataset = ToyDataset(0)
    models = _models(classifier)
    loss_before, recall_before = _progress(models, dataset)
    params = [p for m in models.values() for p in m.parameters()] + list(
        loss.parameters()
    )
    optimizers = {"trunk_optimizer": torch.optim.Adam(params, lr=0.05)}
    loss_funcs = {"metric_loss": loss}
    loss_weights = None
    if classifier:
        loss_funcs["classifier_loss"] = torch.nn.CrossEntropyLoss()
        loss_weights = {"metric_loss": 1, "classifier_loss": 0.5}
    history = []
    trainer = trainer_class(
        models=models,
        optimizers=optimizers,
        batch_size=16,
        loss_funcs=loss_funcs,
        mining_funcs=mining_funcs or {},
        dataset=dataset,
        sampler=samplers.MPerClassSampler(
            dataset.labels, m=4, length_before_new_iter=len(dataset)
        ),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        loss_weights=loss_weights,
        end_of_iteration_hook=lambda t: history.append(t.losses["metric_loss"].item()),
    )
    trainer.train(num_epochs=epochs)
    loss_after, recall_after = _progress(models, dataset)
    assert loss_after < loss_before and recall_after > recall_before
    return models, history


def test_metric_loss_only_with_outer_miner():
    loss = pml_sft.SFTLoss(
        losses.MultiSimilarityLoss(), collect_stats=True, warmup_iterations=0
    )
    models, history = _train(
        trainers.MetricLossOnly, loss, {"tuple_miner": miners.MultiSimilarityMiner()}
    )
    assert len(history) == 30 and all(torch.isfinite(torch.tensor(history)))
    assert loss.num_augmented == 16 and int(loss.iteration) == 30


def test_train_with_classifier_and_arcface():
    loss = pml_sft.SFTLoss(
        losses.ArcFaceLoss(NUM_CLASSES, EMB),
        miner=miners.MultiSimilarityMiner(),
        warmup_iterations=0,
    )
    _, history = _train(trainers.TrainWithClassifier, loss, classifier=True)
    assert all(torch.isfinite(torch.tensor(history)))


def test_global_embedding_space_tester_with_recall_at_k():
    loss = pml_sft.FeatureTranslationLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    models, _ = _train(trainers.MetricLossOnly, loss)
    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        accuracy_calculator=pml_sft.RecallAtK(
            include=(
                "recall_at_1",
                "recall_at_4",
                "precision_at_1",
                "mean_average_precision_at_r",
                "NMI",
            ),
            recall_ks=(1, 4),
            device=torch.device("cpu"),
        ),
    )
    result = tester.test({"val": ToyDataset(1)}, 0, models["trunk"], models["embedder"])
    acc = result["val"]
    for key in ("recall_at_1_level0", "recall_at_4_level0", "NMI_level0"):
        assert 0 <= acc[key] <= 1
    assert acc["recall_at_1_level0"] == pytest.approx(acc["precision_at_1_level0"])
    assert acc["recall_at_4_level0"] >= acc["recall_at_1_level0"]


def _brute_force_recall(x, labels, k):
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    nn = dist.topk(k, largest=False).indices
    return (labels[nn] == labels[:, None]).any(1).double().mean().item()


def test_recall_at_k_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 15, (300,), generator=g)
    x = torch.randn(15, 16, generator=g)[labels] * 0.7 + torch.randn(
        300, 16, generator=g
    )
    # drop classes with a single sample, which both conventions leave out
    keep = torch.bincount(labels)[labels] > 1
    x, labels = x[keep], labels[keep]
    calc = pml_sft.RecallAtK(recall_ks=(1, 2, 4, 8, 16), device=torch.device("cpu"))
    acc = calc.get_accuracy(x, labels)
    for k in (1, 2, 4, 8, 16):
        assert acc[f"recall_at_{k}"] == pytest.approx(_brute_force_recall(x, labels, k))
    assert acc["recall_at_1"] == pytest.approx(acc["precision_at_1"])
    assert {"mean_average_precision_at_r", "NMI", "r_precision"} <= set(acc)


def test_recall_at_k_retrieves_enough_neighbours():
    # classes of two samples: max_bin_count alone would retrieve one neighbour
    labels = torch.arange(20).repeat_interleave(2)
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    calc = pml_sft.RecallAtK(
        recall_ks=(8,), include=("recall_at_8",), device=torch.device("cpu")
    )
    assert calc.get_accuracy(x, labels)["recall_at_8"] == pytest.approx(
        _brute_force_recall(x, labels, 8)
    )


def test_recall_at_k_bad_ks():
    with pytest.raises(ValueError, match="recall_ks"):
        pml_sft.RecallAtK(recall_ks=(0, 2))
    with pytest.raises(ValueError, match="recall_ks"):
        pml_sft.RecallAtK(recall_ks=())


def test_records_are_visible_to_record_keeper_style_logging():
    loss = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), collect_stats=True, warmup_iterations=0
    )
    x = torch.randn(16, 8)
    y = torch.arange(4).repeat_interleave(4)
    loss(x, y)
    names = c_f.list_of_recordable_attributes_list_names()
    # the wrapper runs the augmentation step itself and records its statistics
    recorded = {n: getattr(loss, n) for ln in names for n in getattr(loss, ln, [])}
    assert recorded["num_augmented"] == 16 and recorded["mean_center_angle"] > 0
    assert recorded["current_aug_weight"] == 1.0
    assert "warmup_iterations" in getattr(loss, "_record_these")


@pytest.mark.parametrize(
    "trainer_class,classifier",
    [(trainers.MetricLossOnly, False), (trainers.TrainWithClassifier, True)],
    ids=["MetricLossOnly", "TrainWithClassifier"],
)
def test_training_iterations_connects_a_trainer_to_the_schedule(
    trainer_class, classifier
):
    dataset, epochs = ToyDataset(0), 10
    sampler = samplers.MPerClassSampler(
        dataset.labels, m=4, length_before_new_iter=len(dataset)
    )  # as _train builds it
    total = pml_sft.training_iterations(dataset, 16, epochs, sampler)
    assert total == epochs * (len(dataset) // 16)
    inner = losses.ArcFaceLoss(NUM_CLASSES, EMB) if classifier else None
    loss = pml_sft.SFTLoss(
        inner or losses.MultiSimilarityLoss(), total_iterations=total
    )
    weights, next_weight = [], loss.next_weight
    loss.next_weight = lambda: weights.append(next_weight()) or weights[-1]
    _train(trainer_class, loss, classifier=classifier, epochs=epochs)
    assert int(loss.iteration) == len(weights) == total
    assert weights[: total // 2] == [0.0] * (total // 2)  # the late start
    assert 0 < weights[total // 2] < 1 and weights[-1] == 1.0
    with pytest.raises(ValueError, match="num_epochs"):
        pml_sft.training_iterations(dataset, 16, 0, sampler)
