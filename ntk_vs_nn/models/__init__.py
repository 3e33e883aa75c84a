"""Flax networks built from names, in 1-D or 2-D depending on the data.

Names (as in the paper):
  ``ResNet-d-w``   wide ResNet (pre-activation), depth d = 6n+4, widths 16w/32w/64w; ``ResNetd-w``
                   (the paper's kernel-table spelling) is accepted too.
  ``ResNet-34``    the CIFAR variant of ResNet-34 (basic blocks 3,4,6,3; widths 64/128/256/512);
  ``ResNet-34-w``  the same with widths multiplied by w.
  ``ResNet-18``    the CIFAR variant of ResNet-18: 3x3 stem (stride 1, no max-pool), norm, relu,
                   post-activation basic blocks 2,2,2,2 of widths 64/128/256/512 (stride 2 at the
                   first block of stages 2-4, 1x1 projection + norm when the shape changes), global
                   average pool, dense head (`BasicResNet`, as ResNet-34);
  ``ResNet-18-w``  the same with widths 64w/128w/256w/512w. For ResNet-18 and ResNet-34, w may be a
                   fraction for CPU-sized nets (``ResNet-18-0.25``: 16/32/64/128): 64w must be a whole
                   number >= 1 (w a multiple of 1/64), so every stage doubles the channels exactly.
  ``ResNet-d``     d = 6n+2 (ResNet-20, ResNet-32, ResNet-56): He et al.'s CIFAR ResNet, a 3x3 stem of 16
                   channels and three stages of n basic blocks of 16/32/64 channels (`BasicResNet` with
                   ``base=16``; projection shortcuts). ResNet-32 on CIFAR-10: 0.47 M parameters.
  ``SimpleCNN-d-w`` a plain CNN of d layers: d-1 3-wide convolutions in three stages of widths
                   16w/32w/64w (stride 2 at each new stage) and a dense head.
  ``PlainCNN-d-w`` the CNN a practitioner writes for (Fashion-)MNIST (`PlainCNN`): d stages of
                   [3-wide conv with bias, 32w*2^i channels; relu; 2x2 max-pool], flatten,
                   Dense(128w) + relu, dense head. Meant for ``model.norm=none``. w may be a
                   multiple of 1/32 (``PlainCNN-2-0.5``: 16/32 channels, Dense(64)).
  ``BE<M>-<net>``  a BatchEnsemble (Wen et al. 2020) of M >= 1 members of any net above, e.g.
                   ``BE4-ResNet-18-0.125``, ``BE4-PlainCNN-2-1``: the same architecture with every Dense
                   and Conv (head included) a `BEDense` / `BEConv` of M members (one shared weight,
                   per-member rank-1 fast weights and biases, models/batch_ensemble.py); norms are
                   shared. The net tiles its (B, ...) input to the member-major (M*B, ...) batch;
                   ``module.apply(v, x)`` returns the ensemble's prediction as logits (B, k), the log
                   of the mean over members of the softmax, ``module.apply(v, x, per_member=True)``
                   each member's logits (M, B, k). ``module.members`` is M (0 for a plain net, whose
                   layers and param tree are those of the plain name).

Normalisation (``model.norm``: ``layer``, ``group`` or ``none``; no BatchNorm) is described in
`ntk_vs_nn.models.layers`, the nets themselves in `ntk_vs_nn.models.resnet` and `ntk_vs_nn.models.cnn`.

Every network ends in a Dense layer named ``head`` (a `BEDense` in a BE net): the gp family trains only
that layer.

Example:
    >>> module = build_model("ResNet-10-1", num_classes=10, ndim=1)
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax.numpy as jnp

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models.batch_ensemble import (
    fast_weight_labels,  # noqa: F401 (re-exported: the optimiser's fast/slow labels)
    has_fast_weights,  # noqa: F401 (re-exported)
)
from ntk_vs_nn.models.cnn import PlainCNN, SimpleCNN
from ntk_vs_nn.models.layers import CONVS
from ntk_vs_nn.models.resnet import BASIC_STAGES, BasicResNet, WideResNet

VALID_FORMS = (
    "ResNet-d-w (d = 6n+4, e.g. ResNet-10-1, ResNet-28-10), ResNet-34, ResNet-34-w, "
    "ResNet-18, ResNet-18-w (w may be a fraction with 64w a whole number, e.g. ResNet-18-0.25), "
    "ResNet-d (d = 6n+2, He et al.'s CIFAR ResNet, e.g. ResNet-32), "
    "SimpleCNN-d-w (d >= 2, e.g. SimpleCNN-10-3), PlainCNN-d-w (d >= 1, w a multiple of 1/32, e.g. PlainCNN-2-1, "
    "PlainCNN-2-0.5), "
    "BE<M>-<net> (a BatchEnsemble of M >= 1 members of any of these, e.g. BE4-ResNet-18-0.125)"
)


def split_members(name: str) -> tuple[int, str]:
    """``(members, base name)`` of a model name: ``BE4-ResNet-10-1`` -> ``(4, "ResNet-10-1")``, a plain
    name -> ``(0, name)``. A BE name with M < 1 is a UserError; the base is not validated here
    (`parse_model_name` does)."""
    m = re.fullmatch(r"BE(\d+)-(.+)", name)
    if not m:
        return 0, name
    if int(m.group(1)) < 1:
        raise UserError(f"model {name!r}: a BatchEnsemble needs M >= 1 members; valid forms: {VALID_FORMS}")
    return int(m.group(1)), m.group(2)


def parse_model_name(name: str) -> tuple[str, int, int | float]:
    """``(kind, depth, widen)`` from a model name, or a UserError listing the valid forms.

    kind: ``wrn`` | ``resnet18`` | ``resnet34`` | ``simplecnn`` | ``plaincnn``. widen is an int, or
    a float for the fractional widths of ResNet-18-w / ResNet-34-w (``ResNet-18-0.25`` -> 0.25;
    ``ResNet-18-2`` -> 2). A BatchEnsemble name ``BE<M>-<net>`` gives its base net's triple (its
    members: `split_members`)."""
    members, base = split_members(name)
    if members:
        try:
            return _parse_plain_name(base)
        except UserError as err:
            raise UserError(f"model {name!r}: {err}") from None
    return _parse_plain_name(name)


def _parse_plain_name(name: str) -> tuple[str, int, int | float]:
    """`parse_model_name` of a name without the ``BE<M>-`` prefix."""
    m = re.fullmatch(r"ResNet-?(\d+)(?:-(\d+(?:\.\d+)?))?", name)
    if m:
        depth, w = int(m.group(1)), m.group(2)
        if depth in BASIC_STAGES and (w is None or name.startswith(f"ResNet-{depth}-")):
            widen = 1 if w is None else float(w)
            base = 64 * widen
            if abs(base - round(base)) > 1e-9 or round(base) < 1:
                raise UserError(
                    f"model {name!r}: widths 64w·2^stage must be whole numbers >= 1, got 64·{w} = {base:g} "
                    f"(w must be a positive multiple of 1/64, e.g. 0.25 or 0.125); valid forms: {VALID_FORMS}"
                )
            return f"resnet{depth}", depth, int(widen) if float(widen).is_integer() else widen
        if w is not None and w.isdigit() and int(w) >= 1 and depth >= 10 and (depth - 4) % 6 == 0:
            return "wrn", depth, int(w)
        if w is None and depth >= 8 and (depth - 2) % 6 == 0:  # He et al.'s CIFAR ResNet-(6n+2)
            return "resnet_cifar", depth, 1
    m = re.fullmatch(r"SimpleCNN-(\d+)-(\d+)", name)
    if m and int(m.group(1)) >= 2 and int(m.group(2)) >= 1:
        return "simplecnn", int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"PlainCNN-(\d+)-(\d+(?:\.\d+)?)", name)
    if m and int(m.group(1)) >= 1 and float(m.group(2)) > 0:
        w = float(m.group(2))
        if abs(32 * w - round(32 * w)) > 1e-9:
            raise UserError(
                f"model {name!r}: 32w channels must be a whole number (w a multiple of 1/32, e.g. 0.5); "
                f"valid forms: {VALID_FORMS}"
            )
        return "plaincnn", int(m.group(1)), int(w) if w.is_integer() else w
    raise UserError(f"unknown model {name!r}; valid forms: {VALID_FORMS}")


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # float32: no cast (float64 tests stay float64)


def build_model(
    name: str, num_classes: int, ndim: int, norm="layer", groups=8, dtype="float32", conv="xla"
) -> nn.Module:
    """The Flax module for ``name`` on inputs with ``ndim`` spatial axes (1 or 2); ``dtype``: the
    compute dtype (``float32``, or ``bfloat16``: mixed precision, params and logits stay float32).
    A ``BE<M>-<net>`` name gives the BatchEnsemble of M members (``module.members``; 0 for a plain net)."""
    kind, depth, widen = parse_model_name(name)
    if dtype not in DTYPES:
        raise UserError(f"model dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    dt = DTYPES[dtype]
    if ndim not in (1, 2):
        raise UserError(f"model {name}: inputs must have 1 or 2 spatial axes, got {ndim}")
    if conv not in CONVS:
        raise UserError(f"run.conv must be one of {', '.join(CONVS)}; got {conv!r}")
    kw = dict(num_classes=num_classes, ndim=ndim, widen=widen, norm=norm, groups=groups, dtype=dt, conv=conv)
    kw.update(members=split_members(name)[0])  # 0: the plain net
    if kind in ("resnet18", "resnet34"):
        return BasicResNet(stages=BASIC_STAGES[depth], **kw)
    if kind == "resnet_cifar":
        return BasicResNet(stages=((depth - 2) // 6,) * 3, base=16, **kw)
    return {"wrn": WideResNet, "simplecnn": SimpleCNN, "plaincnn": PlainCNN}[kind](depth=depth, **kw)
