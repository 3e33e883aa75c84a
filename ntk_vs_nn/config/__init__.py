"""Run configuration: frozen dataclasses, presets live in `presets.py`.

Overrides are written ``section.field=value`` (``--set train.lr=0.01``). Values are parsed with
`ast.literal_eval` (bare words are taken as strings, ``a,b`` as a tuple of strings) and must match
the field's type; unknown keys are errors. Every choice PROTOCOLS.md leaves open is a field here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from ntk_vs_nn.config import hashing, validate  # the hash and its older forms; the checks of a config
from ntk_vs_nn.config.base import (
    NEUTRAL_WHEN_MISSING,
    IntervalConfig,
    UserError,
    from_dict,
    hash_dict,
    override,
    section_fields,
    valid_keys,
)

__all__ = [
    "FAMILIES", "KERNEL_FAMILIES", "INFINITE_FAMILIES", "PROTOCOLS",
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "ProtocolConfig", "KernelConfig", "TableConfig",
    "RunConfig", "MessagesConfig", "UserError", "apply_overrides", "override", "valid_keys", "from_dict",
    "hash_dict",
]  # fmt: skip


# The vocabulary of the tables experiment (no jax import here, so every layer can use it).
FAMILIES = ("nn", "ntk", "ntk_prime", "gp")  # weight-space families (`families.py`)
KERNEL_FAMILIES = ("ntk", "ntk_prime", "gp")  # the finite-width kernel families
INFINITE_FAMILIES = ("ntk_inf", "nngp_inf")  # solved in function space only (`kernels/function_space.py`)
IMAGE_SETS = ("fashion_mnist", "cifar10", "cifar100")  # the 2-D image datasets by name (`data.load_dataset`)
PROTOCOLS = ("single", "ensemble", "train_sum", "kd", "sd")  # `protocols/row.py`


@dataclass(frozen=True)
class DataConfig:
    n_train: int = 4000  # training samples before the validation split (mnist1d: generated;
    #                      images: the first n_train, 0 = all)
    n_test: int = 1000  # test samples (mnist1d: generated; npz and images: the first n_test, 0 = all)
    val_fraction: float = 0.1  # share of the training samples carved out for validation
    generator_seed: int = 42  # mnist1d generator seed (the package's own default)
    standardize: bool = True  # subtract the train mean, divide by the train std (scalar)
    source: str = "auto"  # cifar: auto | binary (official archives) | tfds (tensorflow-datasets)
    data_dir: str = ""  # fashion-mnist IDX / cifar archive folder / tfds data_dir ("" = default)


@dataclass(frozen=True)
class ModelConfig:
    norm: str = "layer"  # layer (GroupNorm, 1 group) | group | none; no BatchNorm (models.py)
    groups: int = 8  # GroupNorm groups (reduced to gcd(groups, channels))
    dtype: str = "float32"  # compute dtype of weight-space training: float32 | bfloat16 (GPUs; params,
    # logits, losses stay float32). Kernels (function backend) are always computed in float32.


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"  # adam | sgd (momentum) | adamw
    lr: float = 2e-3  # peak learning rate
    momentum: float = 0.9  # sgd momentum (adam: b1)
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # sgd: added to the gradient; adamw: decoupled
    schedule: str = "cosine"  # constant | cosine | step (x0.2 at 30%, 60%, 80% of training)
    warmup_epochs: int = 0  # linear warm-up
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: str = "none"  # none | crop_flip (pad-and-crop + horizontal flip, images) | crop (no flip:
    #                        classes a flip changes) | shift_noise (1-D signals): data/transforms.py
    augment_kernels: bool = False  # also augment the kernel families (PROTOCOLS: off by default)
    crop_pad: int = 0  # crop padding in pixels; 0 = auto: 4 for 32-pixel images, 2 for 28
    shift: int = 3  # shift_noise: the largest shift, in positions either way
    noise: float = 0.1  # shift_noise: standard deviation of the added Gaussian noise (standardised units)
    mixup: float = 0.0  # mixup alpha of the teachers' training (Beta(a, a) per batch; 0 = off);
    #                     applied where augmentation is (nets; kernel families with augment_kernels)


section_fields(TrainConfig)  # its later fields leave every experiment's hash alone at neutral (config.base)


@dataclass(frozen=True)
class ProtocolConfig:
    members: int = 10  # L: single members, ensemble size, members of the train-sum model
    ensemble_rule: str = "logits"  # logits (the paper's F = sum f) | probs
    sum_scale: str = "mean"  # train-sum G = mean or sum of the members' logits
    data_order: str = "member"  # member: single i draws its own data order (stream data, i) | shared: every
    #                             single takes member 0's order, as the train-sum model's members do (an
    #                             ensemble that differs from the train-sum model only in how it is trained)
    sum_grad: str = "member"  # the train-sum model's step: member = each member's gradient scaled to a
    #                           single's (by 1 / (L c^2), c = 1/L for mean): the sum's kernel is the mean of
    #                           its members' kernels, its step does not shrink with L, and L identical copies
    #                           follow one member | joint = the plain gradient of G (older runs: with
    #                           sum_scale=mean an L x smaller step in function space under SGD)
    kd_alpha: float = 0.9  # weight of the distillation term (1 = pure distillation)
    kd_tau: float = 0.0  # temperature; 0 = auto: 4 for <= 10 classes, 1 otherwise
    sd_students: int = 0  # S; 0 = auto: min(L, 5)
    kd_students: int = 1  # K: KD students of the ensemble per replicate (student k: its own init and data order)
    student_epochs: int = 0  # epochs of the nets' KD and SD students (0 = train.epochs; kernel families
    #                          in weight space: kernel.student_epochs)
    kd_inputs: str = "auto"  # what KD and SD students are distilled on: clean (the training points) |
    #                          augment (train.augment; if none, the data's own: crop_flip for images,
    #                          shift_noise for signals) | mixup (of the clean points, alpha kd_mixup) |
    #                          augment_mixup (both) | auto = as the teachers train
    kd_mixup: float = 1.0  # mixup alpha of the students' inputs (kd_inputs mixup / augment_mixup)
    teacher: str = "auto"  # online: the teacher is evaluated on each batch the student sees | fixed:
    #                        its outputs on the clean training points, once | auto: online whenever
    #                        the students' inputs are transformed (then fixed targets are inconsistent)
    kd_perturb: str = "none"  # the input of the KD term (Nam et al. 2021; engine/perturb.py): none |
    #                           gaussian (x + eta N(0, I)) | ods | confods (a step eta along the input
    #                           gradient of one teacher's randomly weighted softmax; confods: times its
    #                           max probability). The CE term stays on the clean input; needs an online teacher
    kd_eta: float = 1 / 255  # the perturbation's step: in [0, 1] pixel units for images (clipped to [0, 1]),
    #                          in the data's standardised units for signals
    kd_student: str = ""  # the KD students' network ("" = the row's own), e.g. BE4-PlainCNN-2-1
    kd_memberwise: str = "auto"  # a BatchEnsemble-M KD student of an M-member ensemble: member i learns from
    #                              teacher i (on | off: every member from the ensemble | auto = on for such a student)
    control: str = "auto"  # the control row: max(K, S) singles (member i's init and data order) trained like
    #                        the singles but for the students' budget, so that messages 5 and 6 compare students
    #                        with singles trained as long | auto = on where a family's students train longer
    #                        than its singles | on | off
    wide_model: str = ""  # the wide control of net rows: one net of this architecture (e.g. ResNet-10-3, about
    #                       L x a member's parameters) trained exactly like a single member; messages 4 and 7
    #                       then also read ensemble - wide (is the ensemble's gain a capacity gain?) | "" = none


@dataclass(frozen=True)
class KernelConfig:
    """How the kernel families are solved (PROTOCOLS §1; ntk_vs_nn/kernels/function_space.py).

    weights: the linearised model is trained like the net (same optimiser, data order, epochs).
    function: the empirical kernel (NTK, traced or full; gp: phi phi^T + 1) is built on the training
    set and the model is solved in function space; nt: the same with neural-tangents' empirical kernel.
    The infinite-width families (ntk_inf, nngp_inf) are always solved in function space.
    """

    backend: str = "weights"  # weights | function | nt
    solver: str = "mse"  # mse: GD on squared error to one-hot (KD/SD: (1-a) one-hot + a soft
    #                      teacher) targets, closed form | xent: full-batch GD on the (distillation)
    #                      cross-entropy (a loop over steps: slow for n in the thousands) | ridge
    lr: float = 1.0  # GD step in units of n / lambda_max(kernel): < 2 is stable for mse
    lr_units: str = "lambda_max"  # lambda_max (above) | absolute: eta = lr, the step of weight-space GD
    #                               on the mean loss (kernel.lr = train.lr matches an SGD weights run)
    steps: int = 0  # full-batch GD steps; 0 = mse: the best of 1, 3, 10, ..., 1e6 on validation
    #                 accuracy (early stopping in closed form), xent: 3000
    ridge: float = 1e-3  # ridge solver: added to the diagonal, in units of mean(diag(kernel))
    tile_size: int = 256  # kernel tiles (examples per side)
    student_steps: int = 0  # function space: GD steps of the KD and SD students (0 = kernel.steps)
    epochs: int = 0  # weights backend: epochs of the kernel families' members and train-sum model
    #                  (0 = train.epochs): a linearised model converges far slower than its net
    weights_lr: float = 0.0  # weights backend: the kernel families' peak learning rate (0 = train.lr)
    student_epochs: int = 0  # weights backend: epochs of the kernel families' KD and SD students
    #                          (0 = kernel.epochs); protocol.student_epochs is the nets' counterpart
    gp_lr: float = 0.0  # weights backend: the gp family's own peak learning rate (0 = kernel.weights_lr): a
    #                     linear model on frozen features tolerates, and needs, a far larger step than the ntk
    weights_lr_units: str = "lambda_max"  # weights backend, kernel.optimizer=sgd: lambda_max = kernel.weights_lr
    #                                       (0 = 1) is in units of 1 / lambda_max(J^T J / n), the top eigenvalue of
    #                                       the row's Gauss-Newton matrix at W0 (its member 0, 512 training points):
    #                                       one setting fits every architecture, and every unit of the row (singles,
    #                                       train-sum, students) takes that one step | absolute: as given (older runs)
    momentum: float = 0.99  # weights backend, kernel.optimizer=sgd: heavy-ball momentum of the descent
    optimizer: str = "sgd"  # weights backend: the kernel families' optimiser. sgd = gradient descent on the
    #                         linearised model (kernel.momentum as heavy-ball momentum, train.schedule): kernel
    #                         gradient descent in function space, the default | adam: labelled "(Adam)" in
    #                         every table and record, not a kernel method | train: train.optimizer (older runs)
    trace: bool = True  # ntk/ntk_prime in function space: True = the traced NTK used as Theta (x) I_k
    #                     (n x n: cheap, an approximation for a narrow net); False = the full
    #                     (n k x n k) NTK: exact (equals weight-space GD), k^2 x the memory (spilled to
    #                     a temporary file beyond 1 GiB) and ~k x the kernel time. gp and the
    #                     infinite-width kernels are exact either way (block-diagonal by construction)


@dataclass(frozen=True)
class TableConfig:
    nn_models: tuple[str, ...] = ("ResNet-10-1",)  # rows of table nn
    ntk_models: tuple[str, ...] = ("ResNet-10-1",)  # rows of table ntk (x kernel families)
    ntk_families: tuple[str, ...] = ("ntk", "ntk_prime", "gp")
    train_sum: bool = True  # train the train-sum model (false: its cells are "skipped"; the replication)
    train_sum_replicates: int = 0  # train it in replicates 1..n only (0 = every replicate): the costliest unit,
    #                                its interval comes from the replicates that have it (a stratified bootstrap)
    kd_inputs: tuple[str, ...] = ()  # also train the students with each of these protocol.kd_inputs
    #                                  (the teachers are shared) and write kd_inputs.{md,csv}
    reference: str = "paper"  # what the outputs set ours beside: paper (Allen-Zhu & Li's tables) |
    #                           replication (the ResNet-18/Adam replication: replication.{md,csv})
    diversity: tuple[str, ...] = (  # `ntk-vs-nn run diversity`: the students, as student:perturbation, of
        "be:none",
        "be:gaussian",
        "be:ods",
        "be:confods",  # the DE-M teachers (be: a BatchEnsemble-M
        "nn:none",
        "nn:confods",
        "ntk:none",
        "ntk:confods",  # net, member i from teacher i; nn: one net
    )  # of the ensemble; ntk: one ntk model of the ntk members' ensemble); perturbation: protocol.kd_perturb


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0  # root seed of every PRNG stream (replicate r runs with seed + r)
    replicates: int = 1  # R: the whole pipeline runs with the root seeds seed, seed + 1, ..., seed + R - 1
    members: str = "auto"  # auto | sequential | unrolled | vmap | shard: how L members execute
    workers: int = 1  # processes the units of a protocol train in (engine/workers.py): 1 = this
    #                   process, 0 = one per core, N; each worker runs single-threaded XLA
    conv: str = "auto"  # how convolutions are computed: xla (lax.conv_general_dilated) | matmul (one
    #                     matrix product of shifted windows, models/conv.py) | auto: on a CPU matmul
    #                     for vmapped members and 2-D nets without AVX-512, xla otherwise (measured:
    #                     families.resolve_conv)
    sum_step: str = "joint"  # the train-sum model in sequential mode: joint (one program of all L
    #                          members) | split (member by member: faster single-threaded, slower
    #                          with 2 threads here; benchmarks/ensemble_members.py)
    progress: bool = True  # progress bars (always off when not a terminal or CI=true)
    cpu_devices: int = 1  # CPU: XLA devices the host is split into, each batch split over them (data
    #                       parallel; 1 = off, the default; 0 = one per core up to 8). Experimental:
    #                       1.4-1.6x faster here, but a quick-preset run deadlocked once in XLA's CPU
    #                       all-reduce. Set by `ntk-vs-nn table` before jax starts
    checkpoints: bool = True  # save each finished unit's params (orbax) beside its predictions


@dataclass(frozen=True)
class MessagesConfig(IntervalConfig):
    """The verdicts' settings: the paired bootstrap of every comparison (`IntervalConfig`: n_boot draws,
    level, boot_seed), the noise band of older records, the chance flag."""

    SECTION: typing.ClassVar[str] = "messages"

    noise_sigma: float = 0.5  # records without test correctness (older runs): noise band =
    noise_floor: float = 0.1  # max(noise_sigma * sigma_single, noise_floor), accuracy points
    chance_margin: float = 5.0  # a unit whose train accuracy is within this many points of the
    #                             majority-class share never left chance: flagged, its verdicts inconclusive
    state_margin: float = 1.0  # two groups of a comparison whose mean train accuracies differ by more than
    #                            this many points (or that stopped by different rules or budgets) are
    #                            flagged in messages.md as compared at unequal training states


@dataclass(frozen=True)
class Config:
    preset: str = "quick"
    dataset: str = "mnist1d"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    table: TableConfig = field(default_factory=TableConfig)
    run: RunConfig = field(default_factory=RunConfig)
    messages: MessagesConfig = field(default_factory=MessagesConfig)

    def __post_init__(self):
        validate.check(self)

    # Derived values -------------------------------------------------------------------------
    def kd_tau_for(self, num_classes: int) -> float:
        if self.protocol.kd_tau > 0:
            return self.protocol.kd_tau
        return 4.0 if num_classes <= 10 else 1.0

    def with_kd_inputs(self, kd_inputs: str) -> "Config":
        """This config with the students distilled on ``kd_inputs`` (a ``table.kd_inputs`` variant)."""
        return dataclasses.replace(self, protocol=dataclasses.replace(self.protocol, kd_inputs=kd_inputs))

    def replicate(self, r: int) -> "Config":
        """The config of replicate ``r`` (0-based): root seed ``run.seed + r``, one replicate; no train-sum model
        after the first ``table.train_sum_replicates`` replicates."""
        out = dataclasses.replace(self, run=dataclasses.replace(self.run, seed=self.run.seed + r, replicates=1))
        n = self.table.train_sum_replicates
        if n and r >= n and self.table.train_sum:
            out = dataclasses.replace(out, table=dataclasses.replace(self.table, train_sum=False))
        return out

    @property
    def replicate_configs(self) -> list["Config"]:
        return [self.replicate(r) for r in range(self.run.replicates)]

    def train_for(self, family: str, student: bool = False) -> TrainConfig:
        """The training of ``family``'s weight-space units: the nets' `train` section; the kernel
        families with ``kernel.epochs`` / ``kernel.weights_lr``; students with their own epochs."""
        t = self.train
        if family in KERNEL_FAMILIES:
            epochs = self.kernel.epochs or t.epochs
            if student:
                epochs = self.kernel.student_epochs or epochs
            default = 1.0 if self.kernel_lr_in_lambda_units else t.lr
            lr = (family == "gp" and self.kernel.gp_lr) or self.kernel.weights_lr or default
            if self.kernel.optimizer == "sgd":  # heavy ball: the kernel rows' own momentum, no Nesterov
                t = dataclasses.replace(t, momentum=self.kernel.momentum, nesterov=False)
            return dataclasses.replace(t, epochs=epochs, lr=lr, optimizer=self.kernel_optimizer)
        if student and self.protocol.student_epochs:
            return dataclasses.replace(t, epochs=self.protocol.student_epochs)
        return t

    @property
    def kernel_optimizer(self) -> str:
        """The optimiser of the kernel families' weight-space units (``kernel.optimizer``; train: the nets')."""
        return self.train.optimizer if self.kernel.optimizer == "train" else self.kernel.optimizer

    @property
    def kernel_lr_in_lambda_units(self) -> bool:
        """Whether the kernel families' weight-space step is in units of 1 / lambda_max (the row divides
        `train_for`'s lr by it): gradient descent with ``kernel.weights_lr_units=lambda_max``."""
        return self.kernel_optimizer == "sgd" and self.kernel.weights_lr_units == "lambda_max"

    def sum_grad_scale(self, members: int | None = None) -> float:
        """The factor on the train-sum model's gradient (``protocol.sum_grad``): member, 1 / (L c^2) with
        c the sum's scale (L for a mean, 1 / L for a sum), so that its function-space kernel is the mean
        of its members' and a step is a single's; joint, 1."""
        L = members or self.protocol.members
        if self.protocol.sum_grad == "joint":
            return 1.0
        return float(L) if self.protocol.sum_scale == "mean" else 1.0 / L

    def control_members(self, family: str) -> int:
        """How many control singles ``family``'s row trains (``protocol.control``): max(K, S) where on, or
        where auto and the family's students train more epochs than its singles; else 0."""
        c = self.protocol.control
        longer = self.train_for(family, student=True).epochs > self.train_for(family).epochs
        if c == "off" or (c == "auto" and not longer):
            return 0
        return max(self.protocol.kd_students, self.sd_students)

    @property
    def sd_students(self) -> int:
        return self.protocol.sd_students or min(self.protocol.members, 5)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def science_hash(self) -> str:
        """Hash of everything that changes the numbers (not the table layout or execution)."""
        return hashing.config_hash(self, len(hashing.ADDED_LATER))

    def teacher_hash(self) -> str:
        """The hash of the teachers' units (single, ensemble, train-sum): the science hash without
        the fields only students read (`hashing.STUDENT_FIELDS`), so configs that differ in how students are
        distilled share their teachers in one store."""
        return hashing.config_hash(self, len(hashing.ADDED_LATER), students=False)

    def science_hashes(self) -> tuple[str, ...]:
        """The hash, then its older forms: records under any of them belong to this config
        (`hashing.science_hashes`)."""
        return hashing.science_hashes(self)

    def neutral_student_hashes(self) -> tuple[str, ...]:
        """Where a store made before the teacher hash holds this config's teacher units
        (`hashing.neutral_student_hashes`, `protocols.Row._adopt`)."""
        return hashing.neutral_student_hashes(self)

    def teacher_hashes(self) -> tuple[str, ...]:
        """The teacher hash, then its older forms (`hashing.teacher_hashes`)."""
        return hashing.teacher_hashes(self)

    def _hash(self, generations: int, students: bool = True, unread: bool = True) -> str:
        """The hash as it was after ``generations`` generations of fields (`hashing.config_hash`)."""
        return hashing.config_hash(self, generations, students, unread)


# A saved config.json from before a field existed ran with the field's neutral value: what `from_dict`
# fills in when the field is missing (not the class default, where that differs: sum_grad, optimizer).
NEUTRAL_WHEN_MISSING[Config] = hashing.neutral_when_missing()


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` overrides (and ``dataset=...``) with type checks; unknown keys are errors."""
    return override(cfg, overrides, top_level=("dataset",))
