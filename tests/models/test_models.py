"""Model names, output shapes and parameter counts against hand-derived closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models import build_model, parse_model_name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ResNet-10-1", ("wrn", 10, 1)),
        ("ResNet10-2", ("wrn", 10, 2)),  # the paper's kernel-table spelling
        ("ResNet-28-10", ("wrn", 28, 10)),
        ("ResNet-16-4", ("wrn", 16, 4)),
        ("ResNet-34", ("resnet34", 34, 1)),
        ("ResNet-34-2", ("resnet34", 34, 2)),
        ("SimpleCNN-10-3", ("simplecnn", 10, 3)),
        ("SimpleCNN-2-1", ("simplecnn", 2, 1)),
        ("ResNet34", ("resnet34", 34, 1)),
        ("ResNet34-2", ("wrn", 34, 2)),  # kernel-table spelling: the wide ResNet-34-2 (34 = 6*5 + 4)
        ("ResNet-18", ("resnet18", 18, 1)),
        ("ResNet-18-2", ("resnet18", 18, 2)),
        ("ResNet-18-0.25", ("resnet18", 18, 0.25)),
        ("ResNet-18-0.125", ("resnet18", 18, 0.125)),
        ("ResNet-18-1.5", ("resnet18", 18, 1.5)),
        ("ResNet-34-0.5", ("resnet34", 34, 0.5)),
        ("PlainCNN-2-1", ("plaincnn", 2, 1)),
        ("PlainCNN-1-3", ("plaincnn", 1, 3)),
    ],
)
def test_parse_model_name_accepts_the_paper_names(name, expected):
    assert parse_model_name(name) == expected


@pytest.mark.parametrize("name", ["ResNet-18", "ResNet-18-2", "ResNet-34-2", "PlainCNN-2-1", "ResNet-10-1"])
def test_whole_widen_factors_stay_ints(name):
    assert type(parse_model_name(name)[2]) is int


@pytest.mark.parametrize(
    "name",
    [
        "ResNet-11-1",  # 11 is not 6n+4
        "ResNet-10",  # a wide ResNet needs a widen factor
        "ResNet-4-1",  # 6n+4 with n = 0 blocks
        "ResNet-10-0",  # widen factor 0
        "ResNet-34-0",  # widen factor 0 of the ResNet-34 variant
        "Foo",
        "SimpleCNN-1-1",  # a plain CNN needs at least one conv and the head
        "SimpleCNN-3-0",
        "SimpleCNN-3",
        "resnet-10-1",
        "ResNet-18-0",  # widen factor 0
        "ResNet-18-0.001",  # 64 * 0.001 = 0.064 channels
        "ResNet-18-0.3",  # 64 * 0.3 = 19.2: not a whole number of channels
        "ResNet-34-0.01",
        "ResNet18-2",  # 18 is not 6n+4 and ResNet-18-w is spelt with the hyphen
        "ResNet-10-0.5",  # wide ResNets take whole widen factors
        "PlainCNN-0-1",
        "PlainCNN-2-0",
        "PlainCNN-2",
        "PlainCNN-2-0.3",
    ],
)
def test_parse_model_name_rejects_bad_names_listing_valid_forms(name):
    with pytest.raises(UserError) as err:
        parse_model_name(name)
    msg = str(err.value)
    assert repr(name) in msg or name in msg
    assert "ResNet-d-w" in msg and "SimpleCNN-d-w" in msg and "ResNet-34" in msg
    assert "ResNet-18" in msg and "PlainCNN-d-w" in msg


def test_build_model_rejects_three_spatial_axes():
    with pytest.raises(UserError):
        build_model("ResNet-10-1", num_classes=3, ndim=3)


def _init_shapes(module, x_shape):
    """Parameter shapes and output shape without running the network (jax.eval_shape)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    out = jax.eval_shape(module.apply, variables, x)
    return variables["params"], out


def _count(params):
    return sum(int(a.size) for a in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "name, x_shape",
    [
        ("ResNet-10-1", (5, 12, 1)),
        ("ResNet-10-1", (5, 8, 8, 1)),
        ("SimpleCNN-3-1", (5, 12, 1)),
        ("SimpleCNN-3-1", (5, 8, 8, 3)),
        ("ResNet-34", (5, 8, 8, 1)),
        ("ResNet-34", (5, 12, 2)),
        ("ResNet-18-0.125", (5, 8, 8, 1)),
        ("ResNet-18-0.125", (5, 12, 2)),
        ("PlainCNN-2-1", (5, 12, 1)),
        ("PlainCNN-2-1", (5, 8, 8, 3)),
    ],
)
def test_models_give_logits_of_shape_batch_by_classes_and_have_a_head(name, x_shape):
    module = build_model(name, num_classes=7, ndim=len(x_shape) - 2)
    params, out = _init_shapes(module, x_shape)
    assert out.shape == (5, 7)
    assert "head" in params
    assert params["head"]["kernel"].shape[-1] == 7 and params["head"]["bias"].shape == (7,)


def test_real_forward_pass_is_finite_and_input_dependent():
    ndim, x_shape = 1, (3, 12, 1)
    # A real (not shape-only) pass; SimpleCNN keeps the eager init cheap on CPU.
    module = build_model("SimpleCNN-3-1", num_classes=3, ndim=ndim)
    x = jax.random.normal(jax.random.key(1), x_shape)
    variables = module.init(jax.random.key(0), x)
    out = module.apply(variables, x)
    assert out.shape == (3, 3)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out[0] - out[1]).max()) > 0  # different inputs, different logits


def test_param_count_resnet_10_1_1d_without_norm_matches_hand_count():
    # ResNet-10-1 has n = (10 - 4) / 6 = 1 pre-activation block per stage; conv kernels are 3
    # wide (1x1 for the projection shortcut) and have no bias; the Dense head has a bias.
    stem = 3 * 1 * 16
    stage1 = 3 * 16 * 16 + 3 * 16 * 16  # 16 -> 16, stride 1: no projection
    stage2 = 1 * 16 * 32 + 3 * 16 * 32 + 3 * 32 * 32  # projection + two convs
    stage3 = 1 * 32 * 64 + 3 * 32 * 64 + 3 * 64 * 64
    head = 64 * 3 + 3
    module = build_model("ResNet-10-1", num_classes=3, ndim=1, norm="none")
    params, _ = _init_shapes(module, (2, 12, 1))
    assert _count(params) == stem + stage1 + stage2 + stage3 + head  # = 27379


def test_param_count_resnet_10_1_1d_with_group_norm_adds_scale_and_bias_per_channel():
    no_norm = 27379  # the hand count above
    # Each block normalises its input (in channels) and its middle (width); one final norm.
    norms = 2 * (16 + 16) + 2 * (16 + 32) + 2 * (32 + 64) + 2 * 64
    module = build_model("ResNet-10-1", num_classes=3, ndim=1, norm="group")
    params, _ = _init_shapes(module, (2, 12, 1))
    assert _count(params) == no_norm + norms  # = 27859


def wrn_param_count(depth, widen, in_channels, num_classes, ndim, norm):
    """Closed-form parameter count of the pre-activation wide ResNet described in models.py."""
    n = (depth - 4) // 6
    k = 3**ndim
    norm_params = (lambda c: 0) if norm == "none" else (lambda c: 2 * c)
    total = k * in_channels * 16  # stem: 16 channels whatever the widen factor
    prev = 16
    for stage, base in enumerate((16, 32, 64)):
        width = base * widen
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            total += norm_params(prev) + k * prev * width + norm_params(width) + k * width * width
            if stride != 1 or prev != width:
                total += prev * width  # 1x1 projection (kernel size 1 in every axis)
            prev = width
    return total + norm_params(prev) + prev * num_classes + num_classes


@pytest.mark.parametrize(
    "name, depth, widen, x_shape, norm",
    [
        ("ResNet-16-2", 16, 2, (2, 8, 8, 3), "group"),
        ("ResNet-16-1", 16, 1, (2, 12, 1), "none"),
        ("ResNet-10-1", 10, 1, (2, 8, 8, 1), "layer"),
    ],
)
def test_param_count_of_wide_resnets_matches_closed_form(name, depth, widen, x_shape, norm):
    module = build_model(name, num_classes=5, ndim=len(x_shape) - 2, norm=norm)
    params, _ = _init_shapes(module, x_shape)
    assert _count(params) == wrn_param_count(depth, widen, x_shape[-1], 5, len(x_shape) - 2, norm)


def test_param_count_simplecnn_3_1_matches_hand_count():
    # SimpleCNN-3-1: 2 convs (16 then 32 channels), each followed by a GroupNorm, then the head.
    expected = (3 * 1 * 16 + 2 * 16) + (3 * 16 * 32 + 2 * 32) + (32 * 4 + 4)
    module = build_model("SimpleCNN-3-1", num_classes=4, ndim=1)
    params, _ = _init_shapes(module, (2, 12, 1))
    assert _count(params) == expected


def test_group_norm_groups_that_do_not_divide_channels_are_reduced():
    # 6 groups do not divide 16 channels; models.py reduces them to gcd(6, 16) = 2.
    module = build_model("ResNet-10-1", num_classes=3, ndim=1, groups=6)
    _, out = _init_shapes(module, (2, 12, 1))
    assert out.shape == (2, 3)


def resnet34_param_count(widen, in_channels, num_classes, stages=(3, 4, 6, 3), ndim=2):
    """Closed form for the CIFAR ResNet-34 / ResNet-18 of models.py (post-activation basic blocks,
    norms with scale and bias, 1x1 projection + norm on the shortcut when the shape changes)."""
    k = 3**ndim
    total = k * in_channels * int(64 * widen) + 2 * int(64 * widen)
    prev = int(64 * widen)
    for stage, blocks in enumerate(stages):
        width = int(64 * widen) * 2**stage
        for i in range(blocks):
            total += k * prev * width + 2 * width + k * width * width + 2 * width
            if (stage > 0 and i == 0) or prev != width:
                total += prev * width + 2 * width
            prev = width
    return total + prev * num_classes + num_classes


def simplecnn_param_count(depth, widen, in_channels, num_classes):
    """Closed form for SimpleCNN-d-w: d-1 3x3 convs in three equal stages of 16w/32w/64w channels."""
    convs, total, prev = depth - 1, 0, in_channels
    for i in range(convs):
        width = 16 * widen * 2 ** min(3 * i // convs, 2)
        total += 9 * prev * width + 2 * width
        prev = width
    return total + prev * num_classes + num_classes


PAPER_NETS = ["ResNet-28-2", "ResNet-34", "ResNet-34-2", "ResNet-16-10", "ResNet-22-10", "ResNet-28-10", "ResNet-18"]
PAPER_KERNELS = [
    "SimpleCNN-10-3",
    "ResNet10-2",
    "ResNet16-2",
    "ResNet16-5",
    "ResNet10-10",
    "SimpleCNN-10-6",
    "ResNet10-4",
]


@pytest.mark.parametrize("name", PAPER_NETS + PAPER_KERNELS)
def test_paper_architectures_match_their_closed_form_count_on_cifar(name):
    module = build_model(name, num_classes=10, ndim=2)
    params, out = _init_shapes(module, (2, 32, 32, 3))
    assert out.shape == (2, 10)
    kind, depth, widen = parse_model_name(name)
    expected = {
        "wrn": lambda: wrn_param_count(depth, widen, 3, 10, 2, "layer"),
        "resnet34": lambda: resnet34_param_count(widen, 3, 10),
        "resnet18": lambda: resnet34_param_count(widen, 3, 10, stages=(2, 2, 2, 2)),
        "simplecnn": lambda: simplecnn_param_count(depth, widen, 3, 10),
    }[kind]()
    assert _count(params) == expected


@pytest.mark.parametrize(
    "name, published",
    [
        ("ResNet-28-10", 36_479_194),  # WRN-28-10 on CIFAR-10 (Zagoruyko & Komodakis: 36.5M)
        ("ResNet-34", 21_282_122),  # the common CIFAR ResNet-34 (3x3 stem, BN affine params)
        ("ResNet-18", 11_173_962),  # the common CIFAR ResNet-18 (kuangliu/pytorch-cifar: 11.17M)
    ],
)
def test_paper_nets_have_their_published_parameter_counts(name, published):
    """Independent anchors: normalisation layers carry scale and bias like BatchNorm's affine part."""
    params, _ = _init_shapes(build_model(name, num_classes=10, ndim=2), (1, 32, 32, 3))
    assert _count(params) == published


def test_param_count_resnet_18_quarter_width_1d_matches_hand_count():
    # ResNet-18-0.25: widths 16/32/64/128, 3-wide convs without bias, a norm (scale + bias) after
    # every conv, 1x1 projection + norm at the first block of stages 2-4 (stride 2).
    stem = 3 * 1 * 16 + 2 * 16
    stage1 = 2 * (3 * 16 * 16 + 2 * 16 + 3 * 16 * 16 + 2 * 16)
    stage2 = (3 * 16 * 32 + 3 * 32 * 32 + 16 * 32 + 3 * 2 * 32) + (2 * 3 * 32 * 32 + 2 * 2 * 32)
    stage3 = (3 * 32 * 64 + 3 * 64 * 64 + 32 * 64 + 3 * 2 * 64) + (2 * 3 * 64 * 64 + 2 * 2 * 64)
    stage4 = (3 * 64 * 128 + 3 * 128 * 128 + 64 * 128 + 3 * 2 * 128) + (2 * 3 * 128 * 128 + 2 * 2 * 128)
    head = 128 * 10 + 10
    params, out = _init_shapes(build_model("ResNet-18-0.25", num_classes=10, ndim=1), (1, 40, 1))
    assert out.shape == (1, 10)
    assert _count(params) == stem + stage1 + stage2 + stage3 + stage4 + head == 243_354
    assert _count(params) == resnet34_param_count(0.25, 1, 10, stages=(2, 2, 2, 2), ndim=1)


@pytest.mark.parametrize(
    "name, widths", [("ResNet-18-0.25", (16, 32, 64, 128)), ("ResNet-18-2", (128, 256, 512, 1024))]
)
def test_resnet_18_widths_are_64w_times_two_per_stage(name, widths):
    params, _ = _init_shapes(build_model(name, num_classes=10, ndim=2), (1, 32, 32, 3))
    blocks = sorted((k for k in params if k.startswith("BasicBlock_")), key=lambda k: int(k.split("_")[1]))
    assert len(blocks) == 8  # [2, 2, 2, 2]
    out_channels = [params[b]["Conv_1"]["kernel"].shape[-1] for b in blocks]
    assert out_channels == [w for w in widths for _ in range(2)]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, widths[0])  # the 3x3 stem
    assert params["head"]["kernel"].shape == (widths[-1], 10)


def test_resnet_34_fractional_width_matches_closed_form():
    params, _ = _init_shapes(build_model("ResNet-34-0.125", num_classes=4, ndim=1), (1, 16, 2))
    assert _count(params) == resnet34_param_count(0.125, 2, 4, ndim=1)


def plaincnn_param_count(depth, widen, in_channels, num_classes, spatial, ndim, norm="none"):
    """Closed form for PlainCNN-d-w: d [3-wide conv with bias, relu, 2-wide VALID max-pool] stages of
    32w·2^i channels, flatten, Dense(128w), head; a norm (scale + bias) after each conv unless none."""
    total, prev, size = 0, in_channels, spatial
    for i in range(depth):
        width = 32 * widen * 2**i
        total += 3**ndim * prev * width + width + (0 if norm == "none" else 2 * width)
        prev, size = width, size // 2
    flat = prev * size**ndim
    return total + flat * 128 * widen + 128 * widen + 128 * widen * num_classes + num_classes


def test_param_count_plaincnn_2_1_on_mnist_is_the_practitioners_421642():
    conv1 = 3 * 3 * 1 * 32 + 32  # 320
    conv2 = 3 * 3 * 32 * 64 + 64  # 18,496
    dense = 7 * 7 * 64 * 128 + 128  # 401,536: 28 -> 14 -> 7 after two 2x2 max-pools
    head = 128 * 10 + 10  # 1,290
    params, out = _init_shapes(build_model("PlainCNN-2-1", num_classes=10, ndim=2, norm="none"), (1, 28, 28, 1))
    assert out.shape == (1, 10)
    assert conv1 + conv2 + dense + head == 421_642
    assert _count(params) == 421_642
    assert params["Conv_0"]["bias"].shape == (32,) and params["head"]["kernel"].shape == (128, 10)


@pytest.mark.parametrize(
    "name, x_shape, norm",
    [
        ("PlainCNN-2-1", (1, 40, 1), "none"),  # MNIST-1D: 40 -> 20 -> 10
        ("PlainCNN-5-1", (1, 40, 1), "none"),  # 40/20/10/5/2 -> 1 (VALID pooling floors 5 to 2)
        ("PlainCNN-3-2", (1, 28, 28, 1), "layer"),  # 28/14/7 -> 3, a GroupNorm after every conv
        ("PlainCNN-1-1", (1, 9, 9, 3), "group"),
    ],
)
def test_param_count_of_plain_cnns_matches_closed_form(name, x_shape, norm):
    _, depth, widen = parse_model_name(name)
    ndim = len(x_shape) - 2
    params, out = _init_shapes(build_model(name, num_classes=10, ndim=ndim, norm=norm), x_shape)
    assert out.shape == (1, 10)
    assert _count(params) == plaincnn_param_count(depth, widen, x_shape[-1], 10, x_shape[1], ndim, norm)


def test_plaincnn_deeper_than_its_input_allows_is_a_user_error():
    with pytest.raises(UserError, match="at most 5 stages"):
        _init_shapes(build_model("PlainCNN-6-1", num_classes=10, ndim=1, norm="none"), (1, 40, 1))


@pytest.mark.parametrize("name", ["ResNet-18-0.125", "ResNet-34", "PlainCNN-2-1"])
def test_nets_neural_tangents_cannot_express_are_one_clear_user_error(name):
    from ntk_vs_nn.kernels import infinite

    assert not infinite.supports(name)
    with pytest.raises(UserError, match=f"model {name}: not expressible"):
        infinite.infinite_kernel_fn(name, 10, 1)  # refused before neural-tangents is imported


# -- bfloat16 compute (model.dtype, the GPU option of the paper presets) --------------------------------
@pytest.mark.parametrize("name", ["ResNet-10-1", "ResNet-34", "SimpleCNN-3-1", "PlainCNN-2-1"])
def test_bfloat16_computes_in_bf16_keeps_float32_params_and_logits_and_tracks_float32(name):
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    m32 = build_model(name, 10, 2)
    m16 = build_model(name, 10, 2, dtype="bfloat16")
    params = m32.init(jax.random.key(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(m16.init(jax.random.key(1), x))
    assert {a.dtype for a in jax.tree.leaves(m16.init(jax.random.key(1), x))} == {jnp.dtype("float32")}
    # the convolutions really run in bfloat16 (operands), the logits come back in float32
    jaxpr = str(jax.make_jaxpr(lambda p: m16.apply(p, x))(params))
    assert "conv_general_dilated" in jaxpr and "bf16[4,16,16" in jaxpr
    y32, y16 = m32.apply(params, x), m16.apply(params, x)
    assert y16.dtype == jnp.float32 and y16.shape == y32.shape
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert 1e-5 < rel < 5e-2  # bf16 rounding (8-bit mantissa) is visible, but small


def test_float32_default_leaves_the_input_dtype_alone():
    # no cast in the default: float64 inputs and params (the kernels' exactness tests) stay float64
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 12, 1), dtype=jnp.float64)
        m = build_model("SimpleCNN-3-1", 3, 1)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), m.init(jax.random.key(1), x))
        assert m.apply(params, x).dtype == jnp.float64


def test_unknown_model_dtype_is_a_user_error():
    with pytest.raises(UserError, match="dtype"):
        build_model("SimpleCNN-3-1", 3, 1, dtype="float16")


# -- run.conv=matmul: convolution as one matrix product (models/conv.py) --------------------------


@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("kernel,stride,dilation,padding", [
    (3, 1, 1, "SAME"), (3, 2, 1, "SAME"), (1, 2, 1, "SAME"), (3, 1, 2, "SAME"), (3, 2, 1, "VALID"), (2, 1, 1, "SAME"),
    (3, 1, 1, ((2, 0),)),
])  # fmt: skip
def test_matmul_conv_equals_xla_conv_forward_and_backward_in_float64(x64, ndim, kernel, stride, dilation, padding):
    from jax import lax

    from ntk_vs_nn.models.conv import matmul_conv

    rs = np.random.RandomState(ndim * 100 + kernel * 10 + stride)
    x = jnp.asarray(rs.randn(3, *([9] * ndim), 4))
    w = jnp.asarray(rs.randn(*([kernel] * ndim), 4, 5))
    pad = padding if isinstance(padding, str) else padding * ndim
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NWC", "WIO", "NWC") if ndim == 1 else ("NHWC", "HWIO", "NHWC"))
    args = ((stride,) * ndim, pad)
    kw = dict(rhs_dilation=(dilation,) * ndim, dimension_numbers=dn)
    ref = lax.conv_general_dilated(x, w, *args, **kw)
    got = matmul_conv(x, w, *args, **kw)
    assert got.shape == ref.shape and got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-12)
    cot = jnp.asarray(rs.randn(*ref.shape))
    g_ref = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, *args, **kw), x, w)[1](cot)
    g_got = jax.vjp(lambda a, b: matmul_conv(a, b, *args, **kw), x, w)[1](cot)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,ndim", [("ResNet-10-1", 1), ("SimpleCNN-4-1", 2), ("PlainCNN-2-1", 2)])
def test_models_with_matmul_conv_equal_xla_conv_also_vmapped_over_members(x64, name, ndim):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(2, *([12] * ndim), 1))
    xla, mm = build_model(name, 10, ndim), build_model(name, 10, ndim, conv="matmul")
    keys = jax.random.split(jax.random.key(0), 2)
    params = jax.vmap(lambda k: xla.init(k, x[:1])["params"])(keys)  # two members, stacked
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)  # Flax draws float32 params
    f = lambda m: jax.jit(jax.vmap(lambda p: m.apply({"params": p}, x)))(params)  # noqa: E731
    np.testing.assert_allclose(np.asarray(f(mm)), np.asarray(f(xla)), rtol=1e-10, atol=1e-10)
    loss = lambda m: lambda p: jnp.sum(jax.vmap(lambda q: m.apply({"params": q}, x))(p) ** 2)  # noqa: E731
    grad = lambda m: jax.tree.leaves(jax.jit(jax.grad(loss(m)))(params))  # noqa: E731
    for a, b in zip(grad(mm), grad(xla)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10)


def test_matmul_conv_refuses_what_it_does_not_compute_and_bad_names():
    from ntk_vs_nn.config import Config, UserError, override
    from ntk_vs_nn.models.conv import matmul_conv

    x, w = jnp.zeros((1, 8, 4)), jnp.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="grouped"):
        matmul_conv(x, w, (1,), "SAME", feature_group_count=2)
    with pytest.raises(UserError, match="run.conv must be one of"):
        build_model("ResNet-10-1", 10, 1, conv="fft")
    with pytest.raises(UserError, match="run.conv"):
        override(Config(), ["run.conv=fft"])


@pytest.mark.parametrize("avx512", [True, False])
def test_run_conv_auto_is_matmul_for_vmapped_members_and_for_2d_nets_only_without_avx512(monkeypatch, avx512):
    from ntk_vs_nn import families
    from ntk_vs_nn.protocols import resolve_conv

    monkeypatch.setattr(families, "cpu_has_avx512", lambda: avx512)
    assert resolve_conv("auto", "vmap") == resolve_conv("auto", "shard") == "matmul"  # the tests run on CPU
    two_d = "xla" if avx512 else "matmul"
    assert resolve_conv("auto", "sequential", 2) == resolve_conv("auto", "unrolled", 2) == two_d
    assert resolve_conv("auto", "sequential", 1) == resolve_conv("auto", "unrolled", 1) == "xla"
    assert resolve_conv("xla", "vmap", 2) == "xla" and resolve_conv("matmul", "sequential", 1) == "matmul"


def test_cpu_has_avx512_reads_the_cpu_flags(tmp_path):
    from ntk_vs_nn.families import cpu_has_avx512

    for flags, want in (("fpu avx avx2 avx512f avx512bw", True), ("avx2 avx512_vnni fma", False), (None, False)):
        info = tmp_path / f"cpuinfo-{want}-{flags is None}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n")
        assert cpu_has_avx512(str(info)) is want, flags
    assert cpu_has_avx512(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("shape", [(3, 7, 1), (2, 7, 6, 3), (2, 28, 28, 2)])
def test_max_pool2_equals_flax_max_pool_forward_and_backward(x64, shape):
    """The reshape max-pool of PlainCNN against flax's reduce-window max-pool (tie-free inputs, so
    both gradients pick the same element)."""
    import flax.linen as nn

    from ntk_vs_nn.models.cnn import max_pool2

    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    nd = len(shape) - 2
    ref = lambda a: nn.max_pool(a, (2,) * nd, strides=(2,) * nd, padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(max_pool2(x), ref(x))
    w = jax.random.normal(jax.random.key(1), ref(x).shape, jnp.float64)
    g = jax.grad(lambda a: jnp.sum(max_pool2(a) * w))(x)
    g_ref = jax.grad(lambda a: jnp.sum(ref(a) * w))(x)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-12)


def test_cifar_resnet_6n_plus_2_and_fractional_plaincnn_parameter_counts():
    def count(name, shape, norm="none"):
        v = build_model(name, 10, 2, norm).init(jax.random.key(0), jnp.zeros(shape))
        return sum(int(a.size) for a in jax.tree.leaves(v["params"]))

    # ResNet-32 (n = 5) without norms: stem, 3 stages of 5 blocks (two 3x3 convs), 1x1 projections at
    # stages 2-3, head
    c = lambda cin, cout, k=3: k * k * cin * cout  # noqa: E731
    stage1 = 10 * c(16, 16)
    stage2 = c(16, 32) + c(32, 32) + c(16, 32, 1) + 8 * c(32, 32)
    stage3 = c(32, 64) + c(64, 64) + c(32, 64, 1) + 8 * c(64, 64)
    assert count("ResNet-32", (1, 32, 32, 3)) == c(3, 16) + stage1 + stage2 + stage3 + 64 * 10 + 10
    assert parse_model_name("ResNet-20") == ("resnet_cifar", 20, 1)
    assert 0.46e6 < count("ResNet-32", (1, 32, 32, 3), "layer") < 0.48e6  # Nam et al.: 0.47 M with BN
    # PlainCNN-2-0.5: 16 / 32 channels, Dense(64): 160 + 4,640 + 7*7*32*64 + 64 + 650
    assert count("PlainCNN-2-0.5", (1, 28, 28, 1)) == 160 + 4640 + 7 * 7 * 32 * 64 + 64 + 650
    with pytest.raises(UserError, match="1/32"):
        parse_model_name("PlainCNN-2-0.3")
