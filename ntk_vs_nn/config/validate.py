"""The checks every `Config` passes when it is built (`Config.__post_init__`): each bad value is one
`UserError` naming the key and what it must be."""

from __future__ import annotations

from ntk_vs_nn.config.base import UserError


def check(cfg) -> None:
    _choice("model.norm", cfg.model.norm, ("group", "layer", "none"))
    _choice("train.optimizer", cfg.train.optimizer, ("adam", "adamw", "sgd"))
    _choice("train.schedule", cfg.train.schedule, ("constant", "cosine", "step"))
    _choice("train.augment", cfg.train.augment, ("none", "crop_flip", "crop", "shift_noise"))
    _choice("protocol.kd_inputs", cfg.protocol.kd_inputs, ("auto", "clean", "augment", "mixup", "augment_mixup"))
    _choice("protocol.teacher", cfg.protocol.teacher, ("auto", "online", "fixed"))
    _choice("protocol.kd_perturb", cfg.protocol.kd_perturb, ("none", "gaussian", "ods", "confods"))
    _choice("protocol.kd_memberwise", cfg.protocol.kd_memberwise, ("auto", "on", "off"))
    _choice("protocol.control", cfg.protocol.control, ("auto", "on", "off"))
    if cfg.protocol.kd_eta < 0:
        raise UserError(f"protocol.kd_eta must be >= 0, got {cfg.protocol.kd_eta}")
    _choice("table.reference", cfg.table.reference, ("paper", "replication"))
    for v in cfg.table.kd_inputs:
        _choice("table.kd_inputs", v, ("auto", "clean", "augment", "mixup", "augment_mixup"))
    t = cfg.train
    if t.crop_pad < 0 or t.shift < 0 or t.noise < 0 or t.mixup < 0 or cfg.protocol.kd_mixup <= 0:
        raise UserError("train.crop_pad, shift, noise, mixup must be >= 0 and protocol.kd_mixup > 0")
    _choice("data.source", cfg.data.source, ("auto", "binary", "tfds"))
    _choice("protocol.ensemble_rule", cfg.protocol.ensemble_rule, ("logits", "probs"))
    _choice("protocol.sum_scale", cfg.protocol.sum_scale, ("mean", "sum"))
    _choice("protocol.sum_grad", cfg.protocol.sum_grad, ("member", "joint"))
    _choice("protocol.data_order", cfg.protocol.data_order, ("member", "shared"))
    _choice("kernel.optimizer", cfg.kernel.optimizer, ("sgd", "adam", "train"))
    _choice("kernel.weights_lr_units", cfg.kernel.weights_lr_units, ("lambda_max", "absolute"))
    _choice("model.dtype", cfg.model.dtype, ("float32", "bfloat16"))
    _choice("run.conv", cfg.run.conv, ("auto", "xla", "matmul"))
    _choice("run.sum_step", cfg.run.sum_step, ("joint", "split"))
    _choice("kernel.lr_units", cfg.kernel.lr_units, ("lambda_max", "absolute"))
    _choice("run.members", cfg.run.members, ("auto", "sequential", "unrolled", "vmap", "shard"))
    _choice("kernel.backend", cfg.kernel.backend, ("weights", "function", "nt"))
    _choice("kernel.solver", cfg.kernel.solver, ("xent", "mse", "ridge"))
    if cfg.kernel.lr <= 0 or cfg.kernel.steps < 0 or cfg.kernel.ridge < 0 or cfg.kernel.tile_size < 1:
        raise UserError("kernel.lr > 0, kernel.steps >= 0, kernel.ridge >= 0 and kernel.tile_size >= 1 required")
    for name, value in [
        ("protocol.members", cfg.protocol.members),
        ("train.epochs", cfg.train.epochs),
        ("train.batch_size", cfg.train.batch_size),
        ("train.eval_batch_size", cfg.train.eval_batch_size),
        ("model.groups", cfg.model.groups),
    ]:
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if cfg.data.n_train < 0 or cfg.data.n_test < 0:
        raise UserError("data.n_train and data.n_test must be >= 0 (0 = all, for files)")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    check_kd(cfg.protocol.kd_alpha, cfg.protocol.kd_tau, tau_auto=True)
    if cfg.protocol.sd_students < 0:
        raise UserError("protocol.sd_students must be >= 0")
    if cfg.table.train_sum_replicates < 0:
        n = cfg.table.train_sum_replicates
        raise UserError(f"table.train_sum_replicates must be >= 0 (0 = every replicate), got {n}")
    if cfg.protocol.kd_students < 1 or cfg.run.replicates < 1:
        raise UserError("protocol.kd_students and run.replicates must be >= 1")
    k = cfg.kernel
    if min(cfg.protocol.student_epochs, k.student_steps, k.epochs, k.student_epochs) < 0:
        raise UserError(
            "protocol.student_epochs, kernel.student_steps, kernel.epochs and kernel.student_epochs must be >= 0"
            " (0 = as the teachers)"
        )
    if not 0.0 <= cfg.kernel.momentum < 1.0:
        raise UserError(f"kernel.momentum must be in [0, 1), got {cfg.kernel.momentum}")
    if cfg.kernel.weights_lr < 0 or cfg.kernel.gp_lr < 0:
        raise UserError("kernel.weights_lr and kernel.gp_lr must be >= 0 (0 = train.lr, kernel.weights_lr)")
    if cfg.train.lr <= 0:
        raise UserError(f"train.lr must be > 0, got {cfg.train.lr}")


def _choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_kd(alpha: float, tau: float, tau_auto: bool) -> None:
    """The distillation loss's settings, for every experiment that distils: alpha (the weight of the
    distillation term) in [0, 1]; tau > 0, or 0 where it means "auto" (``tau_auto``)."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"protocol.kd_alpha must be in [0, 1], got {alpha}")
    if tau < 0 or (tau == 0 and not tau_auto):
        raise UserError(f"protocol.kd_tau must be {'>= 0 (0 = auto)' if tau_auto else '> 0'}, got {tau}")
