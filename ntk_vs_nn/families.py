"""Model families: one interface for networks, their linearisations, GP features and sums.

A `ModelFamily` is a pair of pure functions (optax style). ``init(key, x) -> variables`` with
``variables = {"params": ..., "state": ...}``; ``apply(variables, x) -> logits (B, k)``. Only
``params`` is ever optimised; ``state`` carries what a family needs but does not train (the
linearisation anchor W0, the frozen GP feature layers). Because everything `apply` reads is inside
``variables``, jit, vmap over members and checkpoints treat every family alike, and no protocol
branches on the family.

  nn         f(W; x)
  ntk        f(W0; x) + <grad_W f(W0; x), W - W0>          (jax.jvp at the anchor W0)
  ntk_prime  <grad_W f(W0; x), W - W0>                     (no random offset: zero at init)
  gp         head(phi_W0(x)): the last layer on frozen random features
  summed     G = mean (or sum) of L members of a family, trained jointly

Example:
    >>> fam = make_family("ntk", "ResNet-10-1", num_classes=10, ndim=1, cfg=Config())
    >>> variables = fam.init(jax.random.key(0), x[:1]); logits = fam.apply(variables, x)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ntk_vs_nn.config import FAMILIES, KERNEL_FAMILIES, Config, UserError  # noqa: F401 - re-exported
from ntk_vs_nn.models import build_model


class ModelFamily(NamedTuple):
    name: str
    init: Callable  # (key, x (B, ...)) -> variables {"params", "state"}
    apply: Callable  # (variables, x (B, ...)) -> logits (B, k)
    # a sum of members kept as a list (`summed`, not stacked): (member family, n, factor); the
    # trainer then differentiates member by member (`Trainer` "split" step)
    parts: tuple | None = None
    members: int = 0  # a BatchEnsemble network's M (0: any other family): `apply` gives the ensemble's
    apply_members: Callable | None = None  # log-mean-softmax, this (variables, x) -> (M, B, k) each member's logits


def network(module, init_params: Callable | None = None) -> ModelFamily:
    """The ordinary network ``f(W; x)``. ``init_params(key, x) -> params`` replaces ``module.init``
    (whose per-parameter keys flax derives from the key), e.g. to draw the weights a model drew before
    it was a Flax module (`models.multiview`)."""

    def init(key, x):
        if init_params is not None:
            return {"params": init_params(key, x), "state": {}}
        return {"params": module.init(key, x)["params"], "state": {}}

    def apply(variables, x):
        return module.apply({"params": variables["params"]}, x)

    members = getattr(module, "members", 0)
    if not members:
        return ModelFamily("nn", init, apply)

    def apply_members(variables, x):
        return module.apply({"params": variables["params"]}, x, per_member=True)

    return ModelFamily("nn", init, apply, members=members, apply_members=apply_members)


def linearized(family: ModelFamily, offset: bool = True) -> ModelFamily:
    """First-order Taylor expansion of ``family`` around its initialisation W0.

    The anchor lives in ``variables["state"]["anchor"]``; params start equal to it, so the
    model equals the network at init (``offset=True``) or outputs zero (``offset=False``, NTK').
    The expansion is one `jax.jvp`: cost about 2-3 forward passes, no Jacobian is materialised.
    """

    def init(key, x):
        v0 = family.init(key, x)
        return {"params": v0["params"], "state": {"anchor": v0["params"], "base": v0["state"]}}

    def apply(variables, x):
        anchor, base = variables["state"]["anchor"], variables["state"]["base"]
        delta = jax.tree.map(jnp.subtract, variables["params"], anchor)
        f0, df = jax.jvp(lambda p: family.apply({"params": p, "state": base}, x), (anchor,), (delta,))
        return f0 + df if offset else df

    return ModelFamily("ntk" if offset else "ntk_prime", init, apply)


def last_layer(family: ModelFamily, head: str = "head") -> ModelFamily:
    """Random-features (GP) model: only the ``head`` layer trains, the rest stays at W0."""

    def init(key, x):
        v0 = family.init(key, x)
        if head not in v0["params"]:
            raise UserError(f"gp family needs a final layer named {head!r}")
        frozen = {k: v for k, v in v0["params"].items() if k != head}
        return {"params": {head: v0["params"][head]}, "state": {"frozen": frozen, "base": v0["state"]}}

    def apply(variables, x):
        params = {**variables["state"]["frozen"], **variables["params"]}
        return family.apply({"params": params, "state": variables["state"]["base"]}, x)

    return ModelFamily("gp", init, apply)


def summed(family: ModelFamily, n: int, scale: str = "mean", stacked: bool = False) -> ModelFamily:
    """G(x) = (1/n) sum_l f_l(W_l; x) (``scale="mean"``) or the plain sum, trained jointly.

    ``init(key, x)`` gives member l the key ``fold_in(key, l)``: called with the parent of the
    single members' init keys, member l of the sum starts exactly where single member l does, so
    ``summed(f, 1)`` trains like single member 0. ``stacked=True`` stores the members with a
    leading axis and vmaps them; otherwise they are a list unrolled inside the program (faster
    for conv nets on CPU, see benchmarks/).
    """
    factor = 1.0 / n if scale == "mean" else 1.0

    def init(key, x):
        members = [family.init(jax.random.fold_in(key, i), x) for i in range(n)]
        if stacked:
            members = jax.tree.map(lambda *a: jnp.stack(a), *members)
            return {"params": members["params"], "state": members["state"]}
        return {"params": [m["params"] for m in members], "state": [m["state"] for m in members]}

    def apply(variables, x):
        if stacked:
            out = jax.vmap(lambda p, s: family.apply({"params": p, "state": s}, x))(
                variables["params"], variables["state"]
            )
            return factor * out.sum(0)
        outs = [family.apply({"params": p, "state": s}, x) for p, s in zip(variables["params"], variables["state"])]
        return factor * sum(outs)

    return ModelFamily(f"{family.name}_sum{n}", init, apply, None if stacked else (family, n, factor))


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the ``flags`` line of ``cpuinfo``; empty where there is no such file)."""
    try:
        with open(cpuinfo) as f:
            return frozenset(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), ()))
    except OSError:
        return frozenset()


def cpu_has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU has AVX-512 (``avx512f`` among `cpu_flags`)."""
    return "avx512f" in cpu_flags(cpuinfo)


def resolve_conv(conv: str, mode: str, ndim: int = 1) -> str:
    """``run.conv=auto`` -> ``matmul`` on a CPU for members vmapped (a batched matrix product took
    0.75x the time of the grouped convolutions vmap makes: results/benchmarks/ensemble_members.json),
    and for 2-D networks on a CPU without AVX-512 (session 7's AVX2 machine: the 2-D ResNet-10-1 at
    322 img/s against 212 with XLA's convolution, results/benchmarks/peer_pytorch.json); else ``xla``:
    1-D networks one by one or unrolled (3.66 s against 7.29 s unrolled with matmul), and 2-D networks
    where the CPU has AVX-512 (matmul took 1.1-1.9x XLA's time for every 2-D net the presets train:
    results/benchmarks/conv_choice.json)."""
    if conv != "auto":
        return conv
    if jax.default_backend() != "cpu":
        return "xla"
    if mode in ("vmap", "shard"):
        return "matmul"
    return "matmul" if ndim == 2 and not cpu_has_avx512() else "xla"


def make_family(
    name: str, model: str, num_classes: int, ndim: int, cfg: Config, conv: str | None = None
) -> ModelFamily:
    """The family ``name`` over the network ``model``; unknown names raise a UserError. ``conv``: how
    convolutions are computed (default ``run.conv``, ``auto`` resolved for members trained one by one,
    `resolve_conv`; `protocols.Row` resolves it for its members mode)."""
    if name not in FAMILIES:
        raise UserError(f"unknown family {name!r}; valid: {', '.join(FAMILIES)}")
    m = cfg.model
    conv = conv or resolve_conv(cfg.run.conv, "sequential", ndim)
    base = network(build_model(model, num_classes, ndim, m.norm, m.groups, m.dtype, conv))
    if name == "nn":
        return base
    if name == "gp":
        return last_layer(base)
    return linearized(base, offset=(name == "ntk"))


def param_count(variables) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(variables["params"]))
