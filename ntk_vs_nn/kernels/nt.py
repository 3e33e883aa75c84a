"""neural-tangents beside our own kernels: a cross-check of the empirical NTK, and infinite-width kernels.

neural-tangents 0.6.5 (the last release) is optional. Install it with ``make install-nt``
(``scripts/install_nt.sh``: ``pip install --no-deps --require-hashes -r requirements-nt.lock``, i.e.
neural-tangents 0.6.5 and frozendict: 2.7 MB installed, ~4 s); nothing else of ours needs it.

**Compatibility layer.** As released, 0.6.5 does not import on jax >= 0.6 (``cannot import name
'Jaxpr' from 'jax.core'``) and its package ``__init__`` imports tensorflow (1.9 GB) through
``neural_tangents.experimental``. `import_neural_tangents` imports it on this environment's jax (0.10)
unchanged on disk, by providing during the import only what the import itself looks up:

1. ``neural_tangents.experimental`` (``empirical_ntk_fn_tf``: NTKs of TensorFlow models through
   jax2tf/tf2jax) is replaced by a stub module whose attributes raise ImportError: it is the only
   part that needs tensorflow and tf2jax, and we never use it.
2. ``jax.core.Jaxpr, JaxprEqn, Literal, Var, Primitive`` (moved to ``jax.extend.core``): set on
   ``jax.core`` from ``jax.extend.core`` for the import, removed afterwards.
3. ``jax.util`` (``safe_map``, ``safe_zip``; the module was removed): a module with two equivalent
   length-checked functions, in ``sys.modules`` for the import only.
4. ``jax.interpreters.ad.zeros_like_p`` (removed): a placeholder primitive, used only as a key of
   the STRUCTURED_DERIVATIVES rule tables, for the import only.

Nothing of jax is left changed after the import. ``stax`` (infinite-width kernels), ``batch``,
``monte_carlo_kernel_fn`` and ``empirical_ntk_fn`` with ``JACOBIAN_CONTRACTION`` and
``NTK_VECTOR_PRODUCTS`` work and are cross-checked in ``tests/test_nt_crosscheck.py`` (against our
kernels to 1e-10 in float64, and against Monte-Carlo estimates from our own wide Flax nets). The same
neural-tangents code on its own pinned jax 0.4.38 gave the same numbers (measured once, float64:
empirical NTKs to 3e-15, infinite-width NNGP to 5e-16, NTK to 2e-9 relative, on ResNet-10-1 1-D and
SimpleCNN-4-1 2-D), so the layer changes nothing but the import.
``STRUCTURED_DERIVATIVES`` and ``AUTO`` (which tries it) use jax internals that changed (they fail,
as STRUCTURED_DERIVATIVES also does on 0.6.5's own pinned jax 0.4.38); `nt_empirical_ntk_fn` refuses
them. On a jax that still has the names (e.g. 0.4.38) the layer only stubs ``experimental``.

**Infinite-width kernels** (`infinite_kernel_fn`, `infinite_kernels`): the neural-tangents ``stax``
network with the same layers as our Flax model (`ntk_vs_nn.models`), layer for layer:

- convolutions: same filter size, stride, ``SAME`` padding, no bias, W ~ N(0, W_std²/fan_in) with
  W_std = 1 (Flax's default ``lecun_normal``: variance 1/fan_in; that it is a *truncated* normal
  rescaled to that variance does not matter at infinite width, where only the variance enters);
- the head: global average pool, then Dense with W_std = 1 and ``b_std = 0`` (Flax: lecun_normal
  kernel, bias initialised to 0 but trained: it adds nothing to the NNGP and exactly 1 to the
  standard-parameterisation NTK, as in our nets);
- ReLU (arc-cosine kernel, exact), FanOut/FanInSum for residual branches, identity or 1x1-conv
  (strided) shortcuts exactly where our blocks have them;
- normalisation ``layer`` (GroupNorm, 1 group) and ``group`` (GroupNorm, G groups): stax
  ``LayerNorm`` over all spatial axes and channels, eps 1e-6 as Flax. This is the infinite-width
  limit of both: the mean over infinitely many zero-mean channels is 0, and every group's variance
  converges to the same layer-wide value (at init, with ``layer``, the stax net computes exactly
  our function: tested to 1e-12). What is *not* represented: GroupNorm's trainable per-channel
  scale and offset (initialised to 1 and 0: no effect on the NNGP; in the NTK they add O(1) terms
  against O(width) from each conv layer: measured 5 % of our empirical NTK for SimpleCNN-3-1,
  3 % for ResNet-10-1, 0.35 % for SimpleCNN-3-16). ``none``: no layer.

``ResNet-34`` and ``ResNet-18`` are refused as not expressible: their post-activation blocks add an
identity shortcut that carries relu outputs (not mean-zero Gaussian), which stax ``FanInSum`` cannot
propagate; so is ``PlainCNN-d-w`` (max-pooling, flatten + hidden Dense). Note
for ``ResNet-d-w``: its stem convolution has 16 channels at every w (`models.WideResNet`), so the
infinite-width kernel is the limit in which the stem widens too (measured: the mean NNGP of 16
random ResNet-10-w is 3.2 % off at w = 1, 2.3 % at w = 8; SimpleCNN-3-16's NNGP and NTK, 4 inits, 2.5 %).

``parameterization="standard"`` (default) is the parameterisation of our nets: the NNGP kernel does
not depend on the widths, but the NTK of a standard-parameterised net grows with them (each weight
layer contributes fan_in x its input kernel; Sohl-Dickstein et al. 2020, arXiv 2001.07301), so the
stax layers carry our actual channel counts (16w/32w/64w, ...) and ``ntk_inf`` is the large-width
limit of E[our empirical NTK] at those width ratios (tested against the average empirical NTK of our
wide nets). ``parameterization="ntk"`` gives the textbook NTK-parameterisation kernel instead
(widths irrelevant; then the head's bias contributes b_std² = 0 to the NTK, unlike our nets).

Cost: the pooled readout needs the full spatial covariance, (b, b, S, S) per layer for S spatial
positions: fine for 1-D signals (MNIST-1D, S = 40), slow for images (S = 784: minutes per thousand
pairs on 2 CPU cores).

Example:
    >>> k_tt, k_st = infinite_kernels("ResNet-10-1", 10, 1, x_train, x_test, kind="ntk")   # (n, n), (m, n)
    >>> kernels = infinite_kernels("ResNet-10-1", 10, 1, x_train, x_test, kind=("nngp", "ntk"))
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import types
import warnings
from typing import Callable, Sequence

import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models import parse_model_name, split_members

NT_VERSION = "0.6.5"
INSTALL_HINT = (
    "run `make install-nt` (bash scripts/install_nt.sh: pip install --no-deps --require-hashes "
    "-r requirements-nt.lock, neural-tangents 0.6.5 + frozendict into .venv)"
)
NORMS = ("layer", "group", "none")
PARAMETERIZATIONS = ("standard", "ntk")
KINDS = ("ntk", "nngp")
EXPRESSIBLE = ("simplecnn", "wrn")
_POST_ACTIVATION = (
    "not expressible as an infinite-width neural-tangents kernel: its post-activation blocks add "
    "an identity shortcut carrying relu outputs (not mean-zero Gaussian) to the block, which stax FanInSum "
    "cannot propagate exactly; use ResNet-d-w (pre-activation) or SimpleCNN-d-w"
)
NOT_EXPRESSIBLE = {
    "resnet34": _POST_ACTIVATION,
    "resnet18": _POST_ACTIVATION,  # the same post-activation BasicBlocks (models.BasicResNet)
    "resnet_cifar": _POST_ACTIVATION,  # ResNet-(6n+2): BasicResNet too
    "plaincnn": "not expressible as an infinite-width neural-tangents kernel: max-pooling has no closed-form "
    "kernel in stax (nor is its flatten + hidden Dense readout mapped here); use SimpleCNN-d-w or ResNet-d-w",
}
_NOT_EXPRESSIBLE_DEFAULT = (
    "not expressible as an infinite-width neural-tangents kernel; use SimpleCNN-d-w or ResNet-d-w"
)
_IMPL_NAMES = {"jacobian_contraction": "JACOBIAN_CONTRACTION", "ntk_vector_products": "NTK_VECTOR_PRODUCTS"}
_ABSENT = object()


# ------------------------------------------------------------------------------------ import


def _safe_map(f, *args):
    args = [list(a) for a in args]
    if any(len(a) != len(args[0]) for a in args[1:]):
        raise ValueError(f"length mismatch: {[len(a) for a in args]}")
    return list(map(f, *args))


def _safe_zip(*args):
    args = [list(a) for a in args]
    if any(len(a) != len(args[0]) for a in args[1:]):
        raise ValueError(f"length mismatch: {[len(a) for a in args]}")
    return list(zip(*args))


@contextlib.contextmanager
def _attrs_added(obj, attrs: dict):
    """Set the attributes of ``obj`` that it lacks, for the duration of the block."""
    added = {k: v for k, v in attrs.items() if not hasattr(obj, k)}
    for k, v in added.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k in added:
            if getattr(obj, k, _ABSENT) is added[k]:
                delattr(obj, k)


@contextlib.contextmanager
def _modules_added(mods: dict):
    """Put the modules that are not importable into ``sys.modules`` for the duration of the block."""
    added = {}
    for name, mod in mods.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = added[name] = mod
    try:
        yield
    finally:
        for name, mod in added.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _experimental_stub() -> types.ModuleType:
    stub = types.ModuleType("neural_tangents.experimental")
    stub.__doc__ = "Stub of ntk_vs_nn.kernels.nt: the tensorflow-only part of neural-tangents is not loaded."

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"neural_tangents.experimental.{name} needs tensorflow; ntk_vs_nn loads neural-tangents without it"
        )

    stub.__getattr__ = __getattr__
    return stub


def import_neural_tangents() -> types.ModuleType:
    """The ``neural_tangents`` module, imported through the compatibility layer (see the module doc).

    Raises:
      UserError: one line with how to install it, when it is not installed or does not import.
    """
    if "neural_tangents" in sys.modules and sys.modules["neural_tangents"] is not None:
        return sys.modules["neural_tangents"]
    import jax
    import jax.core
    import jax.extend.core as jex_core
    import jax.interpreters.ad as jax_ad

    util = types.ModuleType("jax.util")
    util.safe_map, util.safe_zip = _safe_map, _safe_zip
    core_names = ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive")
    before = set(sys.modules)
    sys.modules.setdefault("neural_tangents.experimental", _experimental_stub())
    try:
        with (
            _modules_added({"jax.util": util}),
            _attrs_added(jax.core, {n: getattr(jex_core, n) for n in core_names}),
            _attrs_added(jax_ad, {"zeros_like_p": jex_core.Primitive("ntk_vs_nn_nt_compat_placeholder")}),
        ):
            nt = importlib.import_module("neural_tangents")
    except Exception as e:  # noqa: BLE001 - any import failure is one line for the user
        for name in set(sys.modules) - before:  # no half-imported package left behind
            if name == "neural_tangents" or name.startswith("neural_tangents.") or name == "frozendict":
                del sys.modules[name]
        if isinstance(e, ModuleNotFoundError) and e.name in ("neural_tangents", "frozendict"):
            raise UserError(f"neural-tangents is not installed: {INSTALL_HINT}") from None
        raise UserError(
            f"neural-tangents did not import on jax {jax.__version__} ({type(e).__name__}: {e}); "
            f"the compatibility layer is tested with neural-tangents {NT_VERSION}: {INSTALL_HINT}"
        ) from None
    return nt


def available() -> bool:
    """Whether neural-tangents imports (through the compatibility layer)."""
    try:
        import_neural_tangents()
    except UserError:
        return False
    return True


# ----------------------------------------------------------------------------- empirical NTK


def nt_empirical_ntk_fn(f: Callable, trace_axes=(-1,), implementation="jacobian_contraction", vmap_axes=0) -> Callable:
    """neural-tangents' empirical NTK of ``f(params, x, **kw)``, jitted; a thin wrapper.

    Args:
      f: ``f(params, x, **kwargs) -> (B, k)``.
      trace_axes: ``()`` full (n1, n2, k, k); ``(-1,)`` the mean of the k diagonal entries (n1, n2).
      implementation: ``"jacobian_contraction"`` / ``"ntk_vector_products"`` (our names) or the
        corresponding ``nt.NtkImplementation``; STRUCTURED_DERIVATIVES and AUTO are refused (they
        use jax internals that changed after jax 0.4).
      vmap_axes: neural-tangents' ``vmap_axes``. Default 0: per-example Jacobians, right for our
        nets (no BatchNorm: examples are independent) and far cheaper; None (neural-tangents' own
        default) differentiates the batch as a whole: B x k VJPs through all B examples at once.

    Returns:
      ``fn(x1, x2 | None, params, **kwargs) -> jax.Array``, as ``nt.empirical_ntk_fn``.
    """
    import jax

    nt = import_neural_tangents()
    impl = implementation
    if isinstance(impl, str):
        if impl.lower() not in _IMPL_NAMES:
            raise UserError(f"unknown implementation {impl!r}; valid: {', '.join(_IMPL_NAMES)}")
        impl = getattr(nt.NtkImplementation, _IMPL_NAMES[impl.lower()])
    if impl not in (nt.NtkImplementation.JACOBIAN_CONTRACTION, nt.NtkImplementation.NTK_VECTOR_PRODUCTS):
        raise UserError(
            f"neural-tangents implementation {impl!r} is not supported here: only JACOBIAN_CONTRACTION "
            "and NTK_VECTOR_PRODUCTS work on this jax (STRUCTURED_DERIVATIVES and AUTO need jax <= 0.4 internals)"
        )
    return jax.jit(nt.empirical_ntk_fn(f, trace_axes=tuple(trace_axes), vmap_axes=vmap_axes, implementation=impl))


def nt_train_test(fn: Callable, x_train, x_other, params, tile_size: int = 256):
    """``(fn(x_train, None), fn(x_other, x_train))`` of an `nt_empirical_ntk_fn` kernel, computed by
    neural-tangents' ``nt.batch`` in (tile_size x tile_size) blocks copied to the host, so memory
    stays at one block's Jacobians (the whole training set in one call needed ~4 GB for ResNet-10-1
    on 3,600 MNIST-1D inputs). Inputs are padded to a multiple of the tile (copies of the last row,
    cropped from the result). Returns host (numpy) arrays."""
    nt = import_neural_tangents()
    x_train, x_other = np.asarray(x_train), np.asarray(x_other)
    n, m = len(x_train), len(x_other)
    b = max(1, min(int(tile_size), n))
    batched = nt.batch(fn, batch_size=b, device_count=0, store_on_device=False)
    xt = _pad_rows(x_train, b)
    k_tt = np.asarray(batched(xt, None, params))[:n, :n]
    k_ot = np.asarray(batched(_pad_rows(x_other, b), xt, params))[:m, :n] if m else np.zeros((0, n) + k_tt.shape[2:])
    return k_tt, k_ot


# ------------------------------------------------------------------------ infinite width


def supports(model_name: str, norm: str = "layer") -> bool:
    """Whether `infinite_kernel_fn` can express ``model_name``: SimpleCNN-d-w and ResNet-d-w, not
    ResNet-18/34, PlainCNN-d-w or BatchEnsemble nets (BE<M>-...)."""
    try:
        kind = parse_model_name(model_name)[0]
    except UserError:
        return False
    return kind in EXPRESSIBLE and norm in NORMS and not split_members(model_name)[0]


def infinite_kernel_fn(
    model_name: str,
    num_classes: int,
    ndim: int,
    norm: str = "layer",
    parameterization: str = "standard",
):
    """The neural-tangents ``stax`` network equal to our Flax model ``model_name`` (module doc).

    Args:
      model_name, num_classes, ndim: as `ntk_vs_nn.models.build_model` (ndim = spatial axes, 1 or 2).
      norm: ``layer`` | ``group`` | ``none`` (``model.norm``); layer and group both become stax
        LayerNorm over positions and channels (their common infinite-width limit).
      parameterization: ``standard`` (ours; the stax layers carry our channel counts) or ``ntk``.

    Returns:
      ``(init_fn, apply_fn, kernel_fn)`` of ``nt.stax.serial``; inputs (B, *spatial, C).
    """
    kind, depth, widen = parse_model_name(model_name)
    if kind not in EXPRESSIBLE:
        raise UserError(f"model {model_name}: {NOT_EXPRESSIBLE.get(kind, _NOT_EXPRESSIBLE_DEFAULT)}")
    if ndim not in (1, 2):
        raise UserError(f"model {model_name}: inputs must have 1 or 2 spatial axes, got {ndim}")
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if parameterization not in PARAMETERIZATIONS:
        raise UserError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
    stax = import_neural_tangents().stax
    spatial_and_channels = tuple(range(1, ndim + 2))  # (B, *spatial, C): normalise all but the batch

    def conv(features, stride=1, kernel=3):
        return stax.Conv(
            features,
            (kernel,) * ndim,
            strides=(stride,) * ndim,
            padding="SAME",
            W_std=1.0,
            b_std=None,
            parameterization=parameterization,
        )

    def norm_layer():
        return [] if norm == "none" else [stax.LayerNorm(axis=spatial_and_channels, eps=1e-6)]

    def norm_relu():
        return [*norm_layer(), stax.Relu()]

    def residual(main, shortcut):
        return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())

    layers = []
    if kind == "simplecnn":  # models.SimpleCNN
        convs = depth - 1
        for i in range(convs):
            stage = min(3 * i // convs, 2)
            first_of_stage = i > 0 and stage != min(3 * (i - 1) // convs, 2)
            layers += [conv(16 * widen * 2**stage, 2 if first_of_stage else 1), *norm_relu()]
    else:  # models.WideResNet with PreActBlock
        n = (depth - 4) // 6
        layers.append(conv(16))
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride, features = (2 if (stage > 0 and i == 0) else 1), width * widen
                if stride != 1 or channels != features:  # projection of relu(norm(x))
                    main = stax.serial(conv(features, stride), *norm_relu(), conv(features))
                    layers += [*norm_relu(), residual(main, conv(features, stride, kernel=1))]
                else:  # identity shortcut of x itself
                    main = stax.serial(*norm_relu(), conv(features), *norm_relu(), conv(features))
                    layers.append(residual(main, stax.Identity()))
                channels = features
        layers += norm_relu()
    layers += [
        stax.GlobalAvgPool(),
        stax.Dense(num_classes, W_std=1.0, b_std=0.0, parameterization=parameterization),
    ]
    return stax.serial(*layers)


def _x64():
    """jax's float64 context (``jax.enable_x64`` since 0.7; ``jax.experimental.enable_x64`` before)."""
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    m = -len(x) % multiple
    return x if m == 0 else np.concatenate([x, np.repeat(x[-1:], m, axis=0)])


def default_batch_size(spatial_size: int, n: int, budget_bytes: int = 256 << 20) -> int:
    """Examples per kernel block so that one (b, b, S, S) float64 covariance fits in ``budget_bytes``."""
    b = int(math.sqrt(budget_bytes / (8.0 * spatial_size**2)))
    return max(1, min(b, n, 256))


def infinite_kernels(
    model_name: str,
    num_classes: int,
    ndim: int,
    x_train,
    x_other=None,
    kind: str | Sequence[str] = "ntk",
    batch_size: int | None = None,
    norm: str = "layer",
    parameterization: str = "standard",
    float64: bool = True,
):
    """Infinite-width NTK / NNGP kernels of ``model_name`` on the train set and on other inputs.

    Computed by ``nt.batch`` in (batch_size x batch_size) blocks, results copied to the host (memory
    on the device ~ one block's (b, b, S, S) covariances per layer), in float64 by default.

    Args:
      model_name, num_classes, ndim, norm, parameterization: as `infinite_kernel_fn`.
      x_train: (n, *spatial, C) inputs in the model's layout (as the Flax model takes them).
      x_other: (m, *spatial, C) inputs (e.g. the test set), or None.
      kind: ``"ntk"`` or ``"nngp"`` -> a pair; a sequence of them -> ``{kind: pair}`` (one pass).
      batch_size: examples per block (inputs are padded to a multiple; default: `default_batch_size`).
      float64: compute in float64 (jax x64 enabled for the call only).

    Returns:
      ``(k_train_train (n, n), k_other_train (m, n) or None)`` as float64 numpy (one output's kernel:
      the kernel of a k-output net is this ⊗ I_k), or a dict of such pairs when ``kind`` is a
      sequence.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"unknown kernel kind {kind!r}; valid: {', '.join(KINDS)}")
    nt = import_neural_tangents()
    _, _, kernel_fn = infinite_kernel_fn(model_name, num_classes, ndim, norm, parameterization)
    x_train = np.asarray(x_train)
    x_other = None if x_other is None else np.asarray(x_other)
    for name, x in (("x_train", x_train), ("x_other", x_other)):
        if x is not None and x.ndim != ndim + 2:
            raise UserError(f"{name} must be (N, {'L' if ndim == 1 else 'H, W'}, C) for {ndim}-D inputs, got {x.shape}")
    if x_other is not None and x_other.shape[1:] != x_train.shape[1:]:
        raise UserError(f"x_other has shape {x_other.shape[1:]} per example, x_train {x_train.shape[1:]}")
    n, m = len(x_train), (None if x_other is None else len(x_other))
    if n == 0:
        raise UserError("x_train is empty")
    b = batch_size or default_batch_size(int(np.prod(x_train.shape[1:-1])), max(n, m or 0))
    dtype = np.float64 if float64 else np.float32
    batched = nt.batch(kernel_fn, batch_size=b, device_count=0, store_on_device=False)
    get = kinds if len(kinds) > 1 else kinds[0]
    with _x64() if float64 else contextlib.nullcontext(), warnings.catch_warnings():
        # every FanIn of ours sums a branch with a Conv and an independent one: the assumption holds
        warnings.filterwarnings("ignore", message="`FanIn` layers assume independent inputs")
        xt = _pad_rows(x_train.astype(dtype), b)
        k_tt = batched(xt, None, get=get)
        if x_other is None or m == 0:
            k_ot = None
        else:
            k_ot = batched(_pad_rows(x_other.astype(dtype), b), xt, get=get)

    if m == 0:  # no other inputs: an empty block
        empty = np.zeros((0, n))
        k_ot = empty if len(kinds) == 1 else {kd: empty for kd in kinds}

    def host(k, rows):
        return None if k is None else np.asarray(k, np.float64)[:rows, :n]

    def part(k, kd):
        return k[kd] if isinstance(k, dict) else getattr(k, kd)

    if len(kinds) == 1:
        return host(k_tt, n), host(k_ot, m)
    return {kd: (host(part(k_tt, kd), n), None if k_ot is None else host(part(k_ot, kd), m)) for kd in kinds}
