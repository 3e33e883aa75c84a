"""`ntk_vs_nn.kernels.batch` (tiles of both inputs), `check_kernel`, and models with ``batch_stats``.

1. batch(kernel_fn, batch_size) equals the unbatched kernel (float64, 1e-12 relative) for pytree
   outputs, several trace/diagonal layouts, x2 given or None, tiles that do not divide n, on the
   device or in host memory; with x2=None only the tiles on and above the diagonal are computed.
   The same with x2's Jacobians kept (reuse_jacobians, the default for empirical_ntk_fn): each tile
   is differentiated once; kept in memory or, beyond cache_bytes, in memory-mapped files.
   batched.train_test(x_train, x_other) equals the unbatched Θ(train, train), Θ(other, train) and two
   batched calls, and differentiates each training tile once for both blocks (two calls: twice);
   a 2-tuple keyword is (x_train's, x_other's); the progress bar counts every tile.
2. check_kernel: a PSD kernel passes; a kernel with a negative eigenvalue raises (or warns) with that
   eigenvalue, in the full (n, n, k, k) layout and in a diagonal layout; non-finite entries raise,
   also from batch(check="raise").
3. flax_apply_fn: BatchNorm in eval mode (vmap_axes=0, every implementation) and in train mode
   (mutable batch_stats, vmap_axes=None) equals the explicit Jacobian w.r.t. params only, at the
   given batch_stats (which are not the initial ones, so using the wrong state fails).
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from test_empirical_api import CNN, _setup

import ntk_vs_nn.kernels as nt
from ntk_vs_nn.kernels import batching
from ntk_vs_nn.kernels.batching import check_kernel

EXACT = 1e-10
pytestmark = pytest.mark.usefixtures("x64")  # every test here in float64 (conftest's `x64`)


@pytest.mark.parametrize("axes", [((-1,), ()), ((), ()), ((), (-1,)), ((1,), ())], ids=str)
def test_batched_equals_unbatched(axes):
    _, f, x, params = _setup(5, CNN())
    fn = nt.empirical_ntk_fn(f, *axes, vmap_axes=0)
    calls = []

    def counting(x1, x2, *a, **k):
        calls.append(x2 is None)
        return fn(x1, x2, *a, **k)

    counting.axes = fn.axes
    for store in (True, False):
        for x2 in (None, x[:3]):
            calls.clear()
            got = nt.batch(counting, batch_size=2, store_on_device=store)(x, x2, params)
            want = fn(x, x2, params)
            for leaf in want:
                assert isinstance(got[leaf], jax.Array if store else np.ndarray)
                assert got[leaf].shape == want[leaf].shape and rel_err(got[leaf], want[leaf]) < 1e-12, (leaf, x2)
            # 3 row tiles: x2=None computes the 6 tiles on/above the diagonal (3 of them as (x_i, None))
            assert (len(calls), sum(calls)) == ((6, 3) if x2 is None else (6, 0))
    kernel_fn = nt.empirical_kernel_fn(f, *axes, vmap_axes=0)
    got = nt.batch(kernel_fn, 2)(x, None, ("ntk", "nngp"), params)
    want = kernel_fn(x, None, ("ntk", "nngp"), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("impl", ["jacobian_contraction", "auto"])
def test_batched_with_kept_jacobians_equals_unbatched_and_differentiates_each_tile_once(impl, monkeypatch):
    _, f, x, params = _setup(5, CNN())
    spilled = []
    to_disk = batching._to_disk
    monkeypatch.setattr(batching, "_to_disk", lambda a, *r: spilled.append(1) or to_disk(a, *r))
    for axes in (((-1,), ()), ((), (-1,))):
        fn = nt.empirical_ntk_fn(f, *axes, vmap_axes=0, implementation=impl)
        calls = []

        def counting(*a, **k):
            calls.append(1)
            return fn(*a, **k)

        def jacobian(*a, **k):
            calls.append(0)
            return fn.jacobian(*a, **k)

        counting.axes, counting.jacobian, counting.contract = fn.axes, jacobian, fn.contract
        for store, cache in ((True, 8 << 30), (False, 8 << 30), (False, 0)):  # 0: every kept tile on disk
            for x2 in (None, x[:3]):
                calls.clear()
                got = nt.batch(counting, batch_size=2, store_on_device=store, cache_bytes=cache)(x, x2, params)
                want = fn(x, x2, params)
                for leaf in want:
                    assert isinstance(got[leaf], jax.Array if store else np.ndarray)
                    assert got[leaf].shape == want[leaf].shape and rel_err(got[leaf], want[leaf]) < 1e-12, (leaf, x2)
                # no kernel_fn call; one Jacobian per tile: 3 tiles of x (x2=None), or 2 of x2 + 3 of x
                assert calls == [0] * (3 if x2 is None else 5)
                assert bool(spilled) == (cache == 0)
                spilled.clear()


class Scaled(nn.Module):
    @nn.compact
    def __call__(self, x, scale):
        return CNN()(x * scale)


@pytest.mark.parametrize("impl", ["auto", "jacobian_contraction", "ntk_vector_products"])
def test_train_test_shares_the_training_jacobians(impl, monkeypatch):
    _, f, x, params = _setup(8, CNN())
    x_train, x_other = x[:5], x[5:]  # tiles of 2: train 2 + 2 + 1, other 2 + 1
    bars = []

    class Bar:  # batching's tqdm: the total it was given and the updates it saw
        def __init__(self, total, desc, disable):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(batching, "tqdm", Bar)
    for axes in (((-1,), ()), ((), (-1,))):
        fn = nt.empirical_ntk_fn(f, *axes, vmap_axes=0, implementation=impl)
        tiles = []

        def counting(*a, **k):
            return fn(*a, **k)

        counting.axes = fn.axes
        if impl != "ntk_vector_products":

            def jacobian(x1, *a, **k):
                tiles.append(np.asarray(x1[0]))  # the tile's first example says which set it came from
                return fn.jacobian(x1, *a, **k)

            counting.jacobian, counting.contract = jacobian, fn.contract
        want_tt, want_ot = fn(x_train, None, params), fn(x_other, x_train, params)
        for store, cache in ((True, 8 << 30), (False, 8 << 30), (False, 0)):
            batched = nt.batch(counting, batch_size=2, store_on_device=store, cache_bytes=cache, progress=True)
            tiles.clear()
            k_tt, k_ot = batched.train_test(x_train, x_other, params)
            from_train = sum(any(np.array_equal(t, r) for r in np.asarray(x_train)) for t in tiles)
            if impl != "ntk_vector_products":  # the 3 training tiles once, the 2 other tiles once
                assert (len(tiles), from_train) == (5, 3)
            # 3 kept training Jacobians (reused only), 6 upper blocks of Θ(train, train), 2 x 3 of Θ(other, train)
            assert bars[-1].n == bars[-1].total == (3 if impl != "ntk_vector_products" else 0) + 6 + 6
            tiles.clear()
            two = batched(x_train, None, params), batched(x_other, x_train, params)
            if impl != "ntk_vector_products":  # two calls differentiate the training tiles twice
                assert sum(any(np.array_equal(t, r) for r in np.asarray(x_train)) for t in tiles) == 6
            for got, want, sep in ((k_tt, want_tt, two[0]), (k_ot, want_ot, two[1])):
                for leaf in want:
                    assert isinstance(got[leaf], jax.Array if store else np.ndarray)
                    assert got[leaf].shape == want[leaf].shape and rel_err(got[leaf], want[leaf]) < 1e-12, leaf
                    assert rel_err(got[leaf], sep[leaf]) < 1e-12, leaf


def test_train_test_splits_a_pair_keyword_into_train_and_other():
    module = Scaled()
    x = jax.random.normal(jax.random.key(1), (5, 4, 3, 2), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1], 1.0)["params"])
    fn = nt.empirical_ntk_fn(lambda p, xb, scale: module.apply({"params": p}, xb, scale), vmap_axes=0)
    s_train, s_other = jnp.float64(0.5), jnp.float64(2.0)
    k_tt, k_ot = nt.batch(fn, 2, store_on_device=False).train_test(x[:3], x[3:], params, scale=(s_train, s_other))
    want_tt, want_ot = fn(x[:3], None, params, scale=s_train), fn(x[3:], x[:3], params, scale=(s_other, s_train))
    for leaf in want_tt:
        assert rel_err(k_tt[leaf], want_tt[leaf]) < 1e-12 and rel_err(k_ot[leaf], want_ot[leaf]) < 1e-12
    # the scale matters: the kernel with one scale for both is another one
    assert rel_err(k_ot["logits"], fn(x[3:], x[:3], params, scale=s_train)["logits"]) > 1e-2


def test_batch_refuses_a_kernel_without_its_batch_axes_first():
    _, f, x, params = _setup(4, CNN())
    with pytest.raises(ValueError, match="batch axes"):
        nt.batch(nt.empirical_ntk_fn(f, diagonal_axes=(0,), vmap_axes=0), 2)(x, None, params)


def _full_layout(m, n, k):
    """An (n·k, n·k) matrix as an (n, n, k, k) kernel (row i·k + a)."""
    return m.reshape(n, k, n, k).transpose(0, 2, 1, 3)


def test_check_kernel_reports_the_negative_eigenvalue_and_non_finite_entries():
    rs = np.random.RandomState(0)
    q, _ = np.linalg.qr(rs.randn(12, 12))
    eig = np.linspace(0.0, 3.0, 12)
    psd = q @ np.diag(eig) @ q.T
    assert check_kernel(_full_layout(psd, 4, 3), trace_axes=()) > -1e-12
    eig[0] = -0.25
    bad = _full_layout(q @ np.diag(eig) @ q.T, 4, 3)
    with pytest.raises(ValueError, match=r"smallest eigenvalue -0\.25"):
        check_kernel(bad, trace_axes=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_kernel(bad, trace_axes=(), action="warn")
    assert any("-0.25" in str(w.message) for w in caught)
    # diagonal layout (n, n, k) of a (B, k) output with diagonal_axes=(-1,): one matrix per output unit
    diag = np.stack([psd[:4, :4], psd[4:8, 4:8], psd[:4, :4] - 0.9 * np.eye(4) * np.abs(psd).max()], -1)
    with pytest.raises(ValueError, match="not PSD"):
        check_kernel(diag, trace_axes=(), diagonal_axes=(-1,))
    check_kernel(diag[..., :2], trace_axes=(), diagonal_axes=(-1,))
    assert np.isnan(check_kernel(bad, trace_axes=(), symmetric=False))  # Θ(x1, x2): finiteness only
    with pytest.raises(ValueError, match="2 non-finite"):
        check_kernel(np.array([[1.0, np.nan], [np.inf, 1.0]]))
    _, f, x, params = _setup(4, CNN())
    x = x.at[1, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="non-finite"):
        nt.batch(nt.empirical_ntk_fn(f, vmap_axes=0), 2, check="raise")(x, None, params)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(5)(x.reshape(len(x), -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
        return nn.Dense(3)(nn.relu(h))


def test_batch_stats_through_flax_apply_fn():
    module = BNNet()
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    v = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x, train=False))
    _, upd = module.apply(v, x * 3.0 + 1.0, train=True, mutable=["batch_stats"])  # stats away from (0, 1)
    params, state = v["params"], {"batch_stats": upd["batch_stats"]}
    x1, x2 = x[:2], x[2:]

    def explicit(train):
        def g(p, xb):
            out = module.apply({"params": p, **state}, xb, train=train, mutable=["batch_stats"] if train else False)
            return out[0] if train else out

        j1, j2 = (jax.jacrev(lambda p, xb=xb: g(p, xb))(params) for xb in (x1, x2))
        return sum(
            np.einsum(
                "abp,ABp->aAbB", np.asarray(a).reshape(a.shape[0], 3, -1), np.asarray(b).reshape(b.shape[0], 3, -1)
            )
            for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
        )

    f_eval = nt.flax_apply_fn(module, train=False)
    want = explicit(False)
    for impl in nt.NtkImplementation:
        got = nt.empirical_ntk_fn(f_eval, trace_axes=(), vmap_axes=0, implementation=impl)(x1, x2, params, state=state)
        assert rel_err(got, want) < EXACT, impl
    init_state = {"batch_stats": v["batch_stats"]}
    assert rel_err(nt.empirical_ntk_fn(f_eval, trace_axes=())(x1, x2, params, state=init_state), want) > 1e-3
    f_train = nt.flax_apply_fn(module, mutable=["batch_stats"], train=True)
    want = explicit(True)
    for impl in ("jacobian_contraction", "ntk_vector_products", "auto"):
        got = nt.empirical_ntk_fn(f_train, trace_axes=(), vmap_axes=None, implementation=impl)(
            x1, x2, params, state=state
        )
        assert rel_err(got, want) < EXACT, impl
