"""BatchEnsemble (models/batch_ensemble.py, the BE<M>-<net> names): layers against plain flax layers and an
explicit per-member loop, initialisation, fast-weight labels, and BE nets built by name against plain nets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models import build_model, parse_model_name, split_members
from ntk_vs_nn.models.batch_ensemble import BEConv, BEDense, fast_weight_labels, has_fast_weights
from ntk_vs_nn.models.conv import matmul_conv

CONVS = {"xla": lax.conv_general_dilated, "matmul": matmul_conv}

# case: (kind, one member's input shape, features, window, strides, convolution)
LAYERS = {
    "dense": ("dense", (2, 5), 6, None, None, "xla"),
    "dense-3d": ("dense", (2, 4, 5), 6, None, None, "xla"),  # Dense over the last axis of (B, T, C)
    "conv1d": ("conv", (2, 9, 3), 4, (3,), (1,), "xla"),
    "conv1d-stride2-matmul": ("conv", (2, 9, 3), 4, (3,), (2,), "matmul"),
    "conv2d-stride2": ("conv", (2, 7, 6, 3), 4, (3, 3), (2, 2), "xla"),
    "conv2d-matmul": ("conv", (2, 7, 6, 3), 4, (3, 3), (1, 1), "matmul"),
    "conv2d-1x1-matmul": ("conv", (2, 7, 6, 3), 4, (1, 1), (2, 2), "matmul"),
}


def _layers(case, members, use_bias=True):
    """The BE layer of ``case``, a factory of its plain flax twin (``plain(use_bias)``), one member's input shape."""
    kind, shape, features, window, strides, conv = LAYERS[case]
    if kind == "dense":
        return BEDense(features, members, use_bias=use_bias), lambda b: nn.Dense(features, use_bias=b), shape
    be = BEConv(features, window, members, strides=strides, use_bias=use_bias, conv_general_dilated=CONVS[conv])

    def plain(use_bias):
        return nn.Conv(features, window, strides, padding="SAME", use_bias=use_bias, conv_general_dilated=CONVS[conv])

    return be, plain, shape


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


# -- layers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(LAYERS))
def test_one_member_with_unit_fast_weights_is_the_plain_layer(case):
    be, plain, shape = _layers(case, members=1)
    x = _normal(0, shape)
    params = dict(be.init(jax.random.key(1), x)["params"])
    params["fast_in"], params["fast_out"] = jnp.ones_like(params["fast_in"]), jnp.ones_like(params["fast_out"])
    params["bias"] = _normal(2, params["bias"].shape)  # a nonzero bias, so a dropped or misplaced one shows
    ref = plain(True).apply({"params": {"kernel": params["kernel"], "bias": params["bias"][0]}}, x)
    got = be.apply({"params": params}, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", list(LAYERS))
def test_member_m_is_the_shared_layer_on_x_times_r_m_then_times_s_m_plus_b_m(case):
    members = 3
    be, plain, shape = _layers(case, members)
    b = shape[0]
    x = _normal(0, (members * b, *shape[1:]))  # a different input per member: a row mix-up shows
    params = dict(be.init(jax.random.key(1), x)["params"])
    params["bias"] = _normal(2, params["bias"].shape)
    got = np.asarray(be.apply({"params": params}, x))
    shared = plain(False)
    for m in range(members):
        xm = x[m * b : (m + 1) * b] * params["fast_in"][m]
        ref = shared.apply({"params": {"kernel": params["kernel"]}}, xm) * params["fast_out"][m] + params["bias"][m]
        np.testing.assert_allclose(got[m * b : (m + 1) * b], np.asarray(ref), rtol=1e-5, atol=1e-5)
    # the same input for every member gives different outputs: the fast weights are per member
    same = np.asarray(be.apply({"params": params}, jnp.concatenate([x[:b]] * members)))
    assert np.abs(same[:b] - same[b : 2 * b]).max() > 1e-3


@pytest.mark.parametrize("case", ["dense", "conv2d-stride2"])
def test_param_tree_names_and_shapes(case):
    members = 3
    for use_bias in (True, False):
        be, _, shape = _layers(case, members, use_bias)
        x = jnp.zeros((members * shape[0], *shape[1:]))
        params = jax.tree.map(jnp.shape, be.init(jax.random.key(0), x)["params"])
        kind, _, features, window, _, _ = LAYERS[case]
        c_in = shape[-1]
        expected = {
            "kernel": (c_in, features) if kind == "dense" else (*window, c_in, features),
            "fast_in": (members, c_in),
            "fast_out": (members, features),
        }
        if use_bias:
            expected["bias"] = (members, features)
        assert params == expected


def test_initialisation_fast_weights_are_normal_1_half_bias_zero_kernel_lecun():
    dense = BEDense(128, members=64)
    p = dense.init(jax.random.key(0), jnp.ones((64, 96)))["params"]
    conv = BEConv(48, (3, 3), members=32)
    q = conv.init(jax.random.key(1), jnp.ones((32, 5, 5, 24)))["params"]
    for fast in (p["fast_in"], p["fast_out"], q["fast_in"], q["fast_out"]):
        a = np.asarray(fast)
        assert abs(a.mean() - 1) < 0.1 and 0.42 < a.std() < 0.58, (a.shape, a.mean(), a.std())
        assert np.abs(a[0] - a[1]).max() > 0  # members drawn independently
    assert np.abs(np.asarray(p["fast_in"][:, :8]) - np.asarray(p["fast_out"][:, :8])).max() > 0  # r, s independent
    assert not np.any(np.asarray(p["bias"])) and not np.any(np.asarray(q["bias"]))
    # the shared kernel: flax's default lecun-normal, std 1/sqrt(fan_in)
    assert 0.9 < float(jnp.std(p["kernel"])) * np.sqrt(96) < 1.1
    assert 0.9 < float(jnp.std(q["kernel"])) * np.sqrt(9 * 24) < 1.1


@pytest.mark.parametrize("case", ["dense", "conv1d", "conv2d-matmul"])
def test_bfloat16_computes_in_bf16_with_float32_params(case):
    be, _, shape = _layers(case, members=2)
    be16 = be.clone(dtype=jnp.bfloat16)
    x = _normal(0, (2 * shape[0], *shape[1:]))
    params = be16.init(jax.random.key(1), x)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    y16, y32 = be16.apply(params, x), be.apply(params, x)
    assert y16.dtype == jnp.bfloat16 and y32.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y16.astype(jnp.float32) - y32) / jnp.linalg.norm(y32))
    assert 1e-5 < rel < 5e-2


def test_a_batch_that_does_not_split_into_members_is_a_user_error():
    with pytest.raises(UserError, match="3 members"):
        BEDense(4, members=3).init(jax.random.key(0), jnp.ones((4, 5)))
    with pytest.raises(UserError, match="multiple of 2"):
        BEConv(4, (3,), members=2).init(jax.random.key(0), jnp.ones((3, 8, 1)))


# -- fast-weight labels ----------------------------------------------------------------------------------
def _paths(tree):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_fast_weight_labels_mark_exactly_the_fast_in_and_fast_out_leaves():
    module = build_model("BE2-ResNet-10-1", num_classes=3, ndim=1)
    variables = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 12, 1), jnp.float32))
    labels = fast_weight_labels(variables)  # the whole {"params": ...} tree: any depth
    assert jax.tree.structure(labels) == jax.tree.structure(jax.tree.map(lambda _: "", variables))
    by_path = _paths(labels)
    fast = {p for p, label in by_path.items() if label == "fast"}
    assert fast == {p for p in by_path if p.endswith("['fast_in']") or p.endswith("['fast_out']")}
    assert set(by_path.values()) == {"fast", "slow"} and len(fast) == 2 * sum(p.endswith("['kernel']") for p in by_path)
    assert has_fast_weights(variables)
    plain = build_model("ResNet-10-1", num_classes=3, ndim=1)
    plain_vars = jax.eval_shape(plain.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 12, 1), jnp.float32))
    assert set(jax.tree.leaves(fast_weight_labels(plain_vars))) == {"slow"} and not has_fast_weights(plain_vars)
    # a key named like a fast weight is fast wherever it sits; "fast" elsewhere in a path is not
    toy = {"fast_in": 1.0, "a": {"fast_out": 2.0, "fast_in_not": 3.0}, "fast_in_block": {"kernel": 4.0}}
    assert fast_weight_labels(toy) == {"fast_in": "fast", "a": {"fast_out": "fast", "fast_in_not": "slow"},
                                       "fast_in_block": {"kernel": "slow"}}  # fmt: skip


def test_fast_weight_labels_drive_an_optax_multi_transform():
    layer = BEDense(3, members=2)
    params = layer.init(jax.random.key(0), jnp.ones((4, 2)))["params"]
    tx = optax.multi_transform({"fast": optax.sgd(0.5), "slow": optax.sgd(1.0)}, fast_weight_labels(params))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert {k: float(v.reshape(-1)[0]) for k, v in updates.items()} == {
        "kernel": -1.0, "bias": -1.0, "fast_in": -0.5, "fast_out": -0.5,
    }  # fmt: skip


# -- nets by name -------------------------------------------------------------------------------------------
def _be_to_plain(tree, first=lambda b: b[0]):
    """A plain net's params from its BE twin's: BEConv_k -> Conv_k and BEDense_k -> Dense_k (``hidden``, ``head``
    keep their names), a BE layer's shared kernel kept, ``first(bias)`` (member 0's) as its bias, fast weights
    dropped; norms unchanged."""
    out = {}
    for key, sub in tree.items():
        if not isinstance(sub, dict):
            out[key] = sub
        elif "fast_in" in sub:
            out[key.removeprefix("BE")] = {"kernel": sub["kernel"]}
            if "bias" in sub:
                out[key.removeprefix("BE")]["bias"] = first(sub["bias"])
        else:
            out[key] = _be_to_plain(sub, first)
    return out


def _first_shape(b):
    return jax.ShapeDtypeStruct(b.shape[1:], b.dtype)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


NETS = [("BE3-PlainCNN-1-1", (2, 8, 8, 1), "none"), ("BE2-ResNet-10-1", (2, 12, 1), "layer")]


@pytest.mark.parametrize("name, x_shape, norm", NETS)
def test_be_net_outputs_members_and_their_log_mean_softmax_and_equals_the_plain_net(name, x_shape, norm):
    members, base = split_members(name)
    ndim, k = len(x_shape) - 2, 4
    module = build_model(name, num_classes=k, ndim=ndim, norm=norm)
    assert module.members == members and build_model(base, k, ndim).members == 0
    x = _normal(0, x_shape)
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert "head" in params and "fast_in" in params["head"]
    params = jax.tree_util.tree_map_with_path(  # random per-member biases: not all zero
        lambda p, a: _normal(len(jax.tree_util.keystr(p)), a.shape) if p[-1].key == "bias" and a.ndim == 2 else a,
        params,
    )
    both = jax.jit(lambda p: (module.apply({"params": p}, x, per_member=True), module.apply({"params": p}, x)))
    z, ens = (np.asarray(a, np.float64) for a in both(params))
    assert z.shape == (members, x_shape[0], k) and ens.shape == (x_shape[0], k)
    assert np.abs(z[0] - z[1]).max() > 1e-4  # random fast weights: the members differ
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(ens, np.log(probs.mean(0)), rtol=1e-5, atol=1e-5)
    # every r, s = 1 and the biases equal across members: each member is the plain net with the shared weights
    same = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.ones_like(a) if p[-1].key in ("fast_in", "fast_out")
        else (jnp.broadcast_to(a[:1], a.shape) if p[-1].key == "bias" and a.ndim == 2 else a),
        params,
    )  # fmt: skip
    plain = build_model(base, num_classes=k, ndim=ndim, norm=norm)
    plain_params = _be_to_plain(same)
    plain_shapes = jax.eval_shape(plain.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, plain_params) == jax.tree.map(lambda a: a.shape, plain_shapes)
    ref = np.asarray(jax.jit(lambda p: plain.apply({"params": p}, x))(plain_params))
    z_same, _ = both(same)
    for m in range(members):
        np.testing.assert_allclose(np.asarray(z_same[m]), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, x_shape, norm",
    [
        *NETS,
        ("BE4-ResNet-18-0.125", (1, 8, 8, 1), "layer"),
        ("BE4-SimpleCNN-4-1", (1, 8, 8, 3), "group"),
        ("BE1-PlainCNN-2-1", (1, 12, 1), "none"),
        ("BE5-ResNet-10-1", (1, 8, 8, 2), "none"),
    ],
)
def test_be_param_count_is_plain_plus_members_times_fast_channels_plus_extra_biases(name, x_shape, norm):
    members, base = split_members(name)
    ndim = len(x_shape) - 2
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    be = jax.eval_shape(build_model(name, 3, ndim, norm).init, jax.random.key(0), x)["params"]
    plain = jax.eval_shape(build_model(base, 3, ndim, norm).init, jax.random.key(0), x)["params"]
    # the same architecture: the BE tree maps onto the plain one, shape for shape
    assert jax.tree.map(lambda a: a.shape, _be_to_plain(be, _first_shape)) == jax.tree.map(lambda a: a.shape, plain)
    # from the plain tree: every layer with a kernel (Dense, Conv) gains M*(C_in + C_out) fast weights, its bias
    # (if any) M - 1 more copies; norms are shared
    layers = [p[:-1] for p, _ in jax.tree_util.tree_leaves_with_path(plain) if p[-1].key == "kernel"]
    sub = lambda path: plain if not path else sub(path[:-1])[path[-1].key]  # noqa: E731
    fast = sum(sub(p)["kernel"].shape[-2] + sub(p)["kernel"].shape[-1] for p in layers)
    biases = sum(sub(p)["bias"].shape[0] for p in layers if "bias" in sub(p))
    assert fast > 0 and biases > 0
    assert _count(be) == _count(plain) + members * fast + (members - 1) * biases


def test_be_net_with_bfloat16_keeps_float32_params_and_logits():
    module = build_model("BE2-SimpleCNN-3-1", 3, 1, dtype="bfloat16")
    x = jax.ShapeDtypeStruct((2, 12, 1), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    assert jax.eval_shape(module.apply, variables, x).dtype == jnp.float32
    out = jax.eval_shape(lambda v, a: module.apply(v, a, per_member=True), variables, x)
    assert out.shape == (2, 2, 3) and out.dtype == jnp.float32
    assert "bf16[4,12" in str(jax.make_jaxpr(lambda v: module.apply(v, jnp.zeros(x.shape)))(variables))


def test_a_plain_net_refuses_per_member():
    module = build_model("SimpleCNN-2-1", 3, 1)
    x = jax.ShapeDtypeStruct((2, 12, 1), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="BatchEnsemble"):
        jax.eval_shape(lambda v, a: module.apply(v, a, per_member=True), variables, x)


# -- names --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["PlainCNN-2-1", "ResNet-10-1", "ResNet-18-0.125", "SimpleCNN-4-1", "ResNet10-2"])
def test_parse_model_name_of_a_be_name_is_its_base_triple(base):
    assert parse_model_name(f"BE4-{base}") == parse_model_name(base)
    assert type(parse_model_name(f"BE4-{base}")[2]) is type(parse_model_name(base)[2])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("BE4-PlainCNN-2-1", (4, "PlainCNN-2-1")),
        ("BE1-ResNet-10-1", (1, "ResNet-10-1")),
        ("BE12-ResNet-18-0.125", (12, "ResNet-18-0.125")),
        ("PlainCNN-2-1", (0, "PlainCNN-2-1")),
        ("ResNet-34", (0, "ResNet-34")),
    ],
)
def test_split_members(name, expected):
    assert split_members(name) == expected


@pytest.mark.parametrize("name", ["BE0-PlainCNN-2-1", "BE4-Foo", "BE4-PlainCNN-0-1", "BE4-", "BE-PlainCNN-2-1"])
def test_bad_be_names_are_user_errors_listing_the_valid_forms(name):
    with pytest.raises(UserError) as err:
        parse_model_name(name)
    msg = str(err.value)
    assert repr(name) in msg and "BE<M>-<net>" in msg and "PlainCNN-d-w" in msg and "ResNet-d-w" in msg
    with pytest.raises(UserError):
        build_model(name, 10, 2)


def test_build_model_of_a_be_name_is_the_base_architecture_with_members():
    be, plain = build_model("BE4-ResNet-18-0.125", 10, 2), build_model("ResNet-18-0.125", 10, 2)
    assert type(be) is type(plain) and be.members == 4 and plain.members == 0
    assert be.clone(members=0) == plain
