"""Presets: functions returning a `Config`, each saying what it is for, what it costs and where its
measurements are. ``--set section.field=value`` overrides any field.

smoke     seconds: tiny MNIST-1D; what the tests and CI run (its numbers mean nothing).
minutes   `make table-nn`'s default: MNIST-1D in minutes, one replicate (results/minutes-mnist1d).
quick     MNIST-1D, ResNet-10-1, R = 3: the committed nets and kernel tables (results/quick-mnist1d*).
decisive  the registered MNIST-1D nets run that decides messages 4-7 (registrations/decisive-mnist1d.json).
fmnist    Fashion-MNIST at the paper's premise (results/fmnist-sizing); fmnist-full: all 60,000 images
          (GPUs); fmnist-v1: the earlier, underfit CPU preset.
replication / replication-cifar10: the ResNet-18/Adam replication.
paper-cifar10 / paper-cifar100: the paper's networks and training (GPU scale).
"""

from __future__ import annotations

from ntk_vs_nn.config import (
    Config,
    DataConfig,
    KernelConfig,
    ModelConfig,
    ProtocolConfig,
    RunConfig,
    TableConfig,
    TrainConfig,
    UserError,
)
from ntk_vs_nn.config import from_dict as config_from_dict


def quick() -> Config:
    """MNIST-1D, ResNet-10-1 (1-D, GroupNorm), 10 members of 30 epochs (Adam), K = 3 KD and S = 5 SD students
    of 90 epochs on mixup inputs (teacher online) beside 5 control singles of 90 epochs; kernel rows ntk and
    gp by gradient descent, 300 epochs at step 6 / lambda_max; 10,000 test points; R = 3 replicates; one
    worker process per core. For: the tables and verdicts on a CPU. Cost on 2 cores: the nn table 25-40 min,
    the kernel table ~3.5 h.
    Each budget and choice, measured: results/quick-mnist1d/budget/README.md ("Why the quick preset is
    what it is")."""
    return Config(
        preset="quick",
        data=DataConfig(n_test=10000),
        protocol=ProtocolConfig(kd_students=3, student_epochs=90, kd_inputs="mixup"),
        kernel=KernelConfig(epochs=300, weights_lr=6.0),
        table=TableConfig(ntk_families=("ntk", "gp")),
        run=RunConfig(replicates=3, workers=0),
    )


def minutes() -> Config:
    """The default of `make table-nn` and `make table-ntk`: the quick preset's data and net at a budget that
    finishes in minutes on 2 cores. One replicate of L = 6 members of 30 epochs (Adam), K = 2 KD and S = 3
    SD students at the teachers' budget on the clean points (every unit a message compares trained alike),
    kernel rows by gradient descent as in the quick preset but 100 epochs (ntk 97 % train, within 0.7 points
    of its converged test accuracy: results/quick-mnist1d/budget/kernel-gd); 10,000 test points. The
    ensemble's interval carries its members' noise (their leave-one-out ensembles). Its verdicts are mostly
    inconclusive, each with the smallest difference it could detect; the decided ones are the committed
    runs'. Measured cost (table-nn ~3 min, table-ntk ~16 min): results/minutes-mnist1d/README.md."""
    return Config(
        preset="minutes",
        data=DataConfig(n_test=10000),
        protocol=ProtocolConfig(members=6, kd_students=2, sd_students=3, kd_inputs="clean"),
        kernel=KernelConfig(epochs=100, weights_lr=6.0),
        table=TableConfig(ntk_families=("ntk", "gp")),
        run=RunConfig(replicates=1, workers=0),
    )


def decisive() -> Config:
    """The decisive MNIST-1D nets table (registrations/decisive-mnist1d.json, registered before it trained):
    the quick preset's data and net with every unit a message compares at one budget, 90 epochs (Adam,
    cosine): L = 10 singles, K = 3 KD and S = 5 SD students on mixup inputs (the inputs that distilled
    best, results/kd-inputs-mnist1d) with the teacher online, the wide control ResNet-10-3 (about the
    ensemble's parameter count: tests/experiments/test_registration.py), the train-sum model in the first 3
    replicates; R = 8 replicates on root seeds 1000-1007 (the choices were made on seeds 0-5); 50,000
    test points, so that messages 5-7 can be decided to about 0.1 point. Nets only (`table nn`). Cost on
    2 cores: several hours (the folder's README)."""
    return Config(
        preset="decisive",
        data=DataConfig(n_test=50000),
        train=TrainConfig(epochs=90),
        protocol=ProtocolConfig(kd_students=3, sd_students=5, kd_inputs="mixup", wide_model="ResNet-10-3"),
        table=TableConfig(ntk_models=(), ntk_families=(), train_sum_replicates=3),
        run=RunConfig(seed=1000, replicates=8, workers=0),
    )


def smoke() -> Config:
    """Seconds: tiny MNIST-1D, SimpleCNN-3-1, 3 members, 2 epochs; what the tests and CI run. Its numbers
    mean nothing."""
    return Config(
        preset="smoke",
        data=DataConfig(n_train=240, n_test=200, val_fraction=0.2),
        train=TrainConfig(epochs=2, batch_size=32, lr=3e-3),
        protocol=ProtocolConfig(members=3, sd_students=2),
        table=TableConfig(nn_models=("SimpleCNN-3-1",), ntk_models=("SimpleCNN-3-1",)),
    )


def fmnist() -> Config:
    """``fmnist-v1``, the earlier CPU preset, kept because results/fmnist-fashion_mnist was made with it:
    Fashion-MNIST (10,000 training images), SimpleCNN-4-1, 5 epochs, kernel rows ntk and gp by Adam. For:
    regenerating that folder. Its nets underfit (70 %); the premise preset `fmnist` replaced it. Cost on 2
    cores: about 36 min for both tables (results/fmnist-fashion_mnist/README.md)."""
    return Config(
        preset="fmnist-v1",
        dataset="fashion_mnist",
        data=DataConfig(n_train=10000, n_test=0),
        train=TrainConfig(epochs=5),
        kernel=KernelConfig(optimizer="adam"),  # as it was run (results/fmnist-fashion_mnist): Adam
        table=TableConfig(nn_models=("SimpleCNN-4-1",), ntk_models=("SimpleCNN-4-1",), ntk_families=("ntk", "gp")),
    )


def fmnist_premise(full: bool = False) -> Config:
    """Fashion-MNIST at the paper's premise (single nets >= 99 % train, >= 90 % test): PlainCNN-2-1,
    20,000 images, 20 epochs (Adam, cosine), K = 3; kernel rows ntk and gp by gradient descent (60 epochs
    at step 6 / lambda_max). For: the tables on image data on a CPU. Cost on 2 cores: the nn table ~1.5 h,
    the kernel table ~6 h. ``full``: all 60,000 images, for GPUs. Why each setting:
    results/fmnist-sizing/README.md."""
    return Config(
        preset="fmnist-full" if full else "fmnist",
        dataset="fashion_mnist",
        data=DataConfig(n_train=0 if full else 20000, n_test=0),
        model=ModelConfig(norm="none"),
        train=TrainConfig(epochs=20),
        protocol=ProtocolConfig(kd_students=3),
        # kernel rows: gradient descent at step 6 / lambda_max for 60 epochs, both families
        # (results/fmnist-sizing/kernel-gd); results/fmnist-premise-fashion_mnist's were Adam-trained
        kernel=KernelConfig(epochs=60, weights_lr=6.0),
        table=TableConfig(nn_models=("PlainCNN-2-1",), ntk_models=("PlainCNN-2-1",), ntk_families=("ntk", "gp")),
        run=RunConfig(workers=1 if full else 0),
    )


def replication(dataset: str = "fashion_mnist") -> Config:
    """The ResNet-18/Adam replication (docs/protocols.md): 5 singles, their probability-averaged ensemble,
    one KD student, one SD student per single; Adam lr 1e-3 constant, no train-sum model. For: setting our
    nets beside the published replication. ``fashion_mnist``: ResNet-18-0.125, 10,000 images, 15 epochs,
    about an hour on 2 cores; ``cifar10``: the recipe's scale (GPUs). Measurements:
    results/replication-fashion_mnist/README.md."""
    cifar = dataset == "cifar10"
    model = "ResNet-18" if cifar else "ResNet-18-0.125"
    return Config(
        preset="replication-cifar10" if cifar else "replication",
        dataset=dataset,
        data=DataConfig(n_train=0 if cifar else 10000, n_test=0),
        train=TrainConfig(optimizer="adam", lr=1e-3, schedule="constant", epochs=100 if cifar else 15),
        protocol=ProtocolConfig(members=5, ensemble_rule="probs", kd_students=1, sd_students=5),
        table=TableConfig(nn_models=(model,), ntk_models=(), ntk_families=(), train_sum=False, reference="replication"),
        run=RunConfig(workers=1 if cifar else 0, conv="auto" if cifar else "xla"),
    )


def _paper(dataset: str) -> Config:
    """The paper's setting (GPU scale): all 50,000 training images (the last 5,000 validate),
    SGD momentum 0.9, lr 0.1, batch 128, 200 epochs, step decay, weight decay 5e-4, crop + flip
    for nets; KD alpha 0.9, tau 4 (10 classes) or 1 (100 classes). The kernel rows are the union
    of the paper's NTK, NTK' and GP rows, each with all three kernel families. On GPUs,
    ``--set model.dtype=bfloat16`` trains in mixed precision (bf16 compute, float32 params)."""
    return Config(
        preset=f"paper-{dataset}",
        dataset=dataset,
        data=DataConfig(n_train=0, n_test=0),
        train=TrainConfig(
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="step",
            epochs=200,
            batch_size=128,
            augment="crop_flip",
        ),
        table=TableConfig(
            nn_models=("ResNet-28-2", "ResNet-34", "ResNet-34-2", "ResNet-16-10", "ResNet-22-10", "ResNet-28-10"),
            ntk_models=(
                "SimpleCNN-10-3",
                "ResNet10-2",
                "ResNet16-2",
                "ResNet16-5",
                "ResNet10-10",
                "SimpleCNN-10-6",
                "ResNet10-4",
            ),
        ),
    )


# where a preset's reader finds the decided verdicts: the CLI prints it after a run's own
DECIDED_ELSEWHERE = {
    "minutes": "a minutes-scale run: an inconclusive verdict here says only that its intervals are wide; the "
    "committed runs with replicates and longer budgets: results/decisive-mnist1d/messages.md (nets, R = 8, "
    "registered), results/quick-mnist1d-kernel-gd/messages.md (kernel rows, R = 3)",
}

PRESETS = {
    "smoke": smoke,
    "minutes": minutes,
    "quick": quick,
    "decisive": decisive,
    "fmnist": fmnist_premise,
    "fmnist-full": lambda: fmnist_premise(full=True),
    "fmnist-v1": fmnist,
    "replication": replication,
    "replication-cifar10": lambda: replication("cifar10"),
    "paper-cifar10": lambda: _paper("cifar10"),
    "paper-cifar100": lambda: _paper("cifar100"),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. OUT/config.json)."""
    return config_from_dict(Config, d)
