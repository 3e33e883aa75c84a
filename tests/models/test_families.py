"""The family contract (every family alike) and float64 cross-checks of what each family computes.

Contract, for nn, ntk, ntk_prime, gp and the train-sum of nn / ntk: init/apply shapes, determinism
given a key, training lowers the loss on one batch, and training changes params only.
Cross-checks (float64): ntk = nn at init and ntk_prime = 0; ntk at W0 + d = f(W0) + J(W0) d with
J an explicit Jacobian; gp = the net with frozen hidden layers and a trained head; summed(f, L)
= members started from fold_in(key, l), combined by mean or sum, stacked or not.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from ntk_vs_nn.config import UserError
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family, param_count, summed

MODEL, K = "SimpleCNN-3-1", 3
CONTRACT = ["nn", "ntk", "ntk_prime", "gp", "nn_sum2", "ntk_sum2_stacked"]


def family(name, cfg):
    if name == "nn_sum2":
        return summed(make_family("nn", MODEL, K, 1, cfg), 2)
    if name == "ntk_sum2_stacked":
        return summed(make_family("ntk", MODEL, K, 1, cfg), 2, stacked=True)
    return make_family(name, MODEL, K, 1, cfg)


def trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb)
    )


def to_f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture(scope="module")
def one_batch_fit(tiny_data, tiny_cfg):
    """Train one member of a family for 6 Adam steps on one fixed batch of 16 (cached per name)."""
    train_cfg = dataclasses.replace(tiny_cfg.train, epochs=6, batch_size=16, optimizer="adam")
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]

    @functools.cache
    def fit(name):
        fam = family(name, tiny_cfg)
        trainer = Trainer(fam, train_cfg, n_train=16)
        res = trainer.fit([jax.random.key(3)], [jax.random.key(4)], x, y, mode="unrolled")
        return fam, res

    return fit


# -- the contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTRACT)
def test_init_and_apply_shapes(name, tiny_cfg, tiny_data):
    fam = family(name, tiny_cfg)
    variables = fam.init(jax.random.key(0), tiny_data.x_train[:1])
    assert set(variables) == {"params", "state"}
    out = jax.jit(fam.apply)(variables, tiny_data.x_train[:5])  # a batch size other than init's
    assert out.shape == (5, K)
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name", CONTRACT)
def test_init_is_deterministic_given_the_key(name, tiny_cfg, tiny_data):
    fam = family(name, tiny_cfg)
    x = tiny_data.x_train[:1]
    a, b = fam.init(jax.random.key(0), x), fam.init(jax.random.key(0), x)
    other = fam.init(jax.random.key(1), x)
    assert trees_equal(a, b)
    assert not trees_equal(a["params"], other["params"])


@pytest.mark.parametrize("name", CONTRACT)
def test_compiled_init_gives_the_bits_of_the_op_by_op_init(name, tiny_cfg, tiny_data):
    """Trainers compile ``family.init`` (4-8 s less per trainer than op by op): the same draws, bit
    for bit, so records made before and after the change belong together."""
    fam = family(name, tiny_cfg)
    x = tiny_data.x_train[:1]
    for key in (jax.random.key(0), jax.random.key(3)):
        assert trees_equal(jax.jit(fam.init)(key, x), fam.init(key, x))


@pytest.mark.parametrize("name", CONTRACT)
def test_training_one_batch_lowers_the_loss(name, one_batch_fit):
    _, res = one_batch_fit(name)
    losses = res.losses[0]
    assert np.isfinite(losses).all()
    # 6 Adam steps on the same batch: every step lowers the loss, and clearly overall
    assert (np.diff(losses) < 0).all(), losses
    assert losses[-1] < 0.95 * losses[0], losses


@pytest.mark.parametrize("name", CONTRACT)
def test_training_changes_params_and_leaves_state_untouched(name, one_batch_fit, tiny_data):
    fam, res = one_batch_fit(name)
    init = fam.init(jax.random.key(3), tiny_data.x_train[:1])
    trained = res.variables[0]
    assert jax.tree.structure(trained["params"]) == jax.tree.structure(init["params"])
    assert not trees_equal(trained["params"], init["params"])
    assert trees_equal(trained["state"], init["state"])  # also fails if a donated buffer was reused


def test_unknown_family_is_a_user_error(tiny_cfg):
    with pytest.raises(UserError):
        make_family("ntk_inf_typo", MODEL, K, 1, tiny_cfg)


def test_param_count_counts_trainable_params_only(tiny_cfg, tiny_data):
    x = tiny_data.x_train[:1]
    nn_count = param_count(family("nn", tiny_cfg).init(jax.random.key(0), x))
    assert param_count(family("ntk", tiny_cfg).init(jax.random.key(0), x)) == nn_count
    assert param_count(family("gp", tiny_cfg).init(jax.random.key(0), x)) == 32 * K + K  # head only
    assert param_count(family("nn_sum2", tiny_cfg).init(jax.random.key(0), x)) == 2 * nn_count


# -- (a) ntk and ntk_prime at init --------------------------------------------------------------
def test_ntk_equals_nn_at_init_and_ntk_prime_is_zero(tiny_cfg, tiny_data):
    # Exact identities (f(W0) + 0 and 0), so float32 with exact equality is the stricter check.
    x = tiny_data.x_train[:6]
    key = jax.random.key(7)
    nn, ntk, ntkp = (family(n, tiny_cfg) for n in ("nn", "ntk", "ntk_prime"))
    v_nn, v_ntk, v_ntkp = nn.init(key, x[:1]), ntk.init(key, x[:1]), ntkp.init(key, x[:1])
    assert trees_equal(v_ntk["params"], v_nn["params"])  # same key, same W0 as the net
    out_nn = np.asarray(nn.apply(v_nn, x))
    np.testing.assert_array_equal(np.asarray(ntk.apply(v_ntk, x)), out_nn)
    assert np.abs(out_nn).max() > 1e-3  # so the equality above is not 0 == 0
    np.testing.assert_array_equal(np.asarray(ntkp.apply(v_ntkp, x)), 0.0)


# -- (b) the linearisation against an explicit Jacobian ------------------------------------------
def test_ntk_at_perturbed_params_is_first_order_taylor_with_explicit_jacobian(tiny_cfg, tiny_data):
    key = jax.random.key(11)
    nn, ntk, ntkp = (family(n, tiny_cfg) for n in ("nn", "ntk", "ntk_prime"))
    x32 = tiny_data.x_train[:4]
    # float32 init (flax's param dtype), then everything in float64
    v_nn, v_ntk, v_ntkp = nn.init(key, x32[:1]), ntk.init(key, x32[:1]), ntkp.init(key, x32[:1])
    with jax.enable_x64(True):
        x = jnp.asarray(x32, jnp.float64)
        v_nn, v_ntk, v_ntkp = to_f64(v_nn), to_f64(v_ntk), to_f64(v_ntkp)
        flat0, unravel = ravel_pytree(v_nn["params"])
        dflat = 0.3 * jax.random.normal(jax.random.key(12), flat0.shape, jnp.float64)

        @jax.jit
        def compute(flat0, dflat):
            def f(flat):
                return nn.apply({"params": unravel(flat), "state": v_nn["state"]}, x)

            jac = jax.jacrev(lambda flat: f(flat).ravel())(flat0)  # (B * k, P), explicit
            linear_term = (jac @ dflat).reshape(x.shape[0], K)
            w = unravel(flat0 + dflat)
            return dict(
                jac=jac,
                taylor=f(flat0) + linear_term,
                linear_term=linear_term,
                ntk=ntk.apply({"params": w, "state": v_ntk["state"]}, x),
                ntk_prime=ntkp.apply({"params": w, "state": v_ntkp["state"]}, x),
                nonlinear=f(flat0 + dflat),
            )

        r = compute(flat0, dflat)
        assert r["jac"].shape == (x.shape[0] * K, flat0.size)
        assert r["ntk"].dtype == jnp.float64
        np.testing.assert_allclose(r["ntk"], r["taylor"], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(r["ntk_prime"], r["linear_term"], rtol=1e-9, atol=1e-10)
        # The linear model is not the network: at W it must differ from f(W) by far more than
        # the tolerance above (a family that just called the net would fail here).
        gap = float(jnp.abs(r["nonlinear"] - r["ntk"]).max())
        assert gap > 1e-2 * float(jnp.abs(r["linear_term"]).max())


# -- (c) gp: only the head trains, on the net's frozen features ---------------------------------
def test_gp_params_are_the_head_of_the_same_net(tiny_cfg, tiny_data):
    x = tiny_data.x_train[:1]
    v_gp = family("gp", tiny_cfg).init(jax.random.key(5), x)
    v_nn = family("nn", tiny_cfg).init(jax.random.key(5), x)
    assert set(v_gp["params"]) == {"head"}
    assert trees_equal(v_gp["params"]["head"], v_nn["params"]["head"])


def test_gp_gradient_is_the_nets_head_gradient(tiny_cfg, tiny_data):
    x, y = tiny_data.x_train[:8], tiny_data.y_train[:8]
    gp, nn = family("gp", tiny_cfg), family("nn", tiny_cfg)
    v_gp, v_nn = gp.init(jax.random.key(5), x[:1]), nn.init(jax.random.key(5), x[:1])

    def loss(apply, state):
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(
            apply({"params": p, "state": state}, x), y
        ).mean()

    g_gp = jax.jit(jax.grad(loss(gp.apply, v_gp["state"])))(v_gp["params"])
    g_nn = jax.jit(jax.grad(loss(nn.apply, v_nn["state"])))(v_nn["params"])
    assert set(g_gp) == {"head"}
    assert float(jnp.abs(g_gp["head"]["kernel"]).max()) > 0
    for a, b in zip(jax.tree.leaves(g_gp["head"]), jax.tree.leaves(g_nn["head"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_trained_gp_equals_net_with_frozen_layers_and_trained_head(one_batch_fit, tiny_cfg, tiny_data):
    gp, res = one_batch_fit("gp")
    trained = res.variables[0]
    nn = family("nn", tiny_cfg)
    v_nn = nn.init(jax.random.key(3), tiny_data.x_train[:1])  # the fit's init key: W0 of the net
    assert not trees_equal(trained["params"]["head"], v_nn["params"]["head"])  # the head trained
    merged = {**v_nn["params"], "head": trained["params"]["head"]}
    x = tiny_data.x_test[:10]
    np.testing.assert_allclose(
        gp.apply(trained, x), nn.apply({"params": merged, "state": v_nn["state"]}, x), rtol=1e-5, atol=1e-6
    )


# -- (d) summed ------------------------------------------------------------------------------------
# These identities hold up to float rounding, and the alternatives they rule out (wrong member
# keys, wrong scale, members mixed up between layouts) move the outputs by O(1): float32 suffices.
@pytest.mark.parametrize("base", ["nn", "ntk"])
def test_summed_of_one_member_is_the_member_with_key_fold_in_0(base, tiny_cfg, tiny_data):
    x = tiny_data.x_train[:6]
    fam = family(base, tiny_cfg)
    key = jax.random.key(21)
    v_sum = summed(fam, 1).init(key, x[:1])
    v_one = fam.init(jax.random.fold_in(key, 0), x[:1])
    assert len(jax.tree.leaves(v_sum)) == len(jax.tree.leaves(v_one))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v_sum), jax.tree.leaves(v_one)))
    assert not trees_equal(v_one["params"], fam.init(key, x[:1])["params"])  # fold_in(k, 0) != k
    np.testing.assert_allclose(summed(fam, 1).apply(v_sum, x), fam.apply(v_one, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", ["mean", "sum"])
def test_summed_output_is_mean_or_sum_of_member_outputs(scale, tiny_cfg, tiny_data):
    x = tiny_data.x_train[:6]
    fam = family("nn", tiny_cfg)
    key = jax.random.key(22)
    fam3 = summed(fam, 3, scale)
    members = [fam.init(jax.random.fold_in(key, i), x[:1]) for i in range(3)]
    outs = [np.asarray(fam.apply(v, x), np.float64) for v in members]
    expected = sum(outs) / (3 if scale == "mean" else 1)
    np.testing.assert_allclose(fam3.apply(fam3.init(key, x[:1]), x), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(outs[0] - outs[1]).max() > 1e-2  # the members really differ


def test_summed_stacked_equals_unstacked_at_perturbed_params(tiny_cfg, tiny_data):
    x = tiny_data.x_train[:6]
    fam = family("ntk", tiny_cfg)
    key = jax.random.key(23)
    listed, stacked = summed(fam, 2), summed(fam, 2, stacked=True)
    v_list, v_stack = listed.init(key, x[:1]), stacked.init(key, x[:1])
    # stacked = the listed members along a leading axis
    for name in ("params", "state"):
        restacked = jax.tree.map(lambda *a: jnp.stack(a), *v_list[name])
        assert trees_equal(restacked, v_stack[name])

    # move every member away from its anchor, by the same amounts in both layouts
    def noise(tree, i):
        key = jax.random.fold_in(jax.random.key(9), i)
        return jax.tree.map(lambda a: 0.1 * jax.random.normal(key, a.shape), tree)

    deltas = [noise(p, i) for i, p in enumerate(v_list["params"])]
    p_list = [jax.tree.map(jnp.add, p, d) for p, d in zip(v_list["params"], deltas)]
    p_stack = jax.tree.map(jnp.add, v_stack["params"], jax.tree.map(lambda *a: jnp.stack(a), *deltas))
    out_list = np.asarray(listed.apply({"params": p_list, "state": v_list["state"]}, x))
    out_stack = np.asarray(jax.jit(stacked.apply)({"params": p_stack, "state": v_stack["state"]}, x))
    np.testing.assert_allclose(out_stack, out_list, rtol=1e-5, atol=1e-5)
    at_init = np.asarray(listed.apply(v_list, x))
    assert np.abs(out_list - at_init).max() > 1e-2  # the perturbation mattered
