"""SFT in a complete PML training run: a model, an MPerClassSampler, SFTLoss on the
validated schedule (training_iterations), PML's MetricLossOnly trainer, its
GlobalEmbeddingSpaceTester with Recall@K on classes never seen in training, and the
wrapper's statistics.

    python examples/train_with_sft.py              # tiny random data, seconds
    python examples/train_with_sft.py --emoji      # the emoji data set (fetched with
                                                   # npm and rendered on first use)
"""

import argparse

import torch
from pytorch_metric_learning import losses, miners, samplers, testers, trainers

import pml_sft


class ToyClasses(torch.utils.data.Dataset):
    """Gaussian classes in 32-d, for a run in seconds."""

    def __init__(self, classes, per_class=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        means = 2 * torch.randn(classes, 32, generator=g)
        self.labels = torch.arange(classes).repeat_interleave(per_class)
        self.data = means[self.labels] + torch.randn(len(self.labels), 32, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def emoji_splits(root, image_size=32):
    """The emoji data set's class-disjoint train and test splits, as tensors."""
    import torchvision.transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    splits = [
        pml_sft.EmojiDataset(root, split, transform, image_size, download=True)
        for split in ("train", "test")
    ]
    return splits, image_size * image_size * 3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emoji", action="store_true", help="the emoji data set")
    parser.add_argument("--root", default=".cache/pml_sft", help="data folder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    if args.emoji:
        (train, test), input_size = emoji_splits(args.root)
    else:
        train, test, input_size = ToyClasses(12), ToyClasses(6, seed=1), 32
    trunk = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(input_size, 64), torch.nn.ReLU()
    )
    embedder = torch.nn.Linear(64, 16)

    # 4 samples per class in each batch: SFT needs two or more to have a centre
    labels = train.labels.tolist() if torch.is_tensor(train.labels) else train.labels
    sampler = samplers.MPerClassSampler(labels, m=4, length_before_new_iter=len(train))
    length = pml_sft.training_iterations(train, args.batch_size, args.epochs, sampler)
    loss = pml_sft.SFTLoss(
        losses.MultiSimilarityLoss(),
        miner=miners.MultiSimilarityMiner(),
        total_iterations=length,  # augment from half-way, ramp over a quarter
        collect_stats=True,  # also the mean angle between source and target centres
    )
    models = {"trunk": trunk, "embedder": embedder}
    optimizers = {
        f"{name}_optimizer": torch.optim.Adam(model.parameters(), lr=1e-3)
        for name, model in models.items()
    }
    seen = []

    def end_of_iteration(trainer):
        angle = loss.mean_center_angle  # NaN where nothing was augmented
        seen.append((len(seen) + 1, loss.current_aug_weight, loss.num_augmented, angle))

    trainer = trainers.MetricLossOnly(
        models,
        optimizers,
        args.batch_size,
        {"metric_loss": loss},
        train,
        sampler=sampler,
        dataloader_num_workers=0,
        end_of_iteration_hook=end_of_iteration,
    )
    trainer.train(num_epochs=args.epochs)
    for iteration, weight, augmented, angle in seen[:: max(1, len(seen) // 6)]:
        print(
            f"iteration {iteration:4d}: weight {weight:.2f}, {augmented} augmented, "
            f"mean angle between source and target centres {angle:.1f} degrees"
        )

    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=pml_sft.RecallAtK(
            recall_ks=(1, 2, 4), include=("recall_at_1", "recall_at_2", "recall_at_4")
        ),
        dataloader_num_workers=0,
    )
    accuracy = tester.test({"test": test}, args.epochs, trunk, embedder)["test"]
    recall = accuracy["recall_at_1_level0"]
    print(f"{length} iterations; test classes never seen in training: R@1 {recall:.3f}")
    return seen, accuracy


if __name__ == "__main__":
    main()
