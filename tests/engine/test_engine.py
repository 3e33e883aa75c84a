"""The training engine: the distillation loss, optimisers and schedules, and `Trainer.fit`
(execution modes agree, KD at alpha = 0 is plain training, a one-member sum is a single member)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import log_softmax

from ntk_vs_nn.config import TrainConfig
from ntk_vs_nn.engine.losses import distill_loss
from ntk_vs_nn.engine.optim import make_optimizer
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family, summed

MODEL, K = "SimpleCNN-3-1", 3


def init_keys(m, base=100):
    return [jax.random.key(base + i) for i in range(m)]


def data_keys(m, base=200):
    return [jax.random.key(base + i) for i in range(m)]


def max_abs_diff(a, b):
    return max(
        float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# -- distill_loss -----------------------------------------------------------------------------------
def _random_batch(seed, b=8, k=5):
    rs = np.random.RandomState(seed)
    logits = rs.randn(b, k).astype(np.float32) * 2
    teacher = rs.randn(b, k).astype(np.float32) * 2
    labels = rs.randint(0, k, size=b).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(teacher)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_distill_loss_with_alpha_0_is_cross_entropy(tau):
    logits, labels, teacher = _random_batch(0)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(distill_loss(logits, labels, teacher, 0.0, tau), expected, rtol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_distill_loss_with_hard_one_hot_teacher_is_tau_squared_ce_of_tempered_student(tau):
    # softmax(teacher / tau) is one-hot on class c (a margin of 200 / tau), so
    # KL(onehot_c || softmax(s / tau)) = -log softmax(s / tau)_c, and at alpha = 1 the loss is
    # tau^2 * CE(s / tau, c), whatever the true labels are.
    logits, labels, _ = _random_batch(1)
    c = (labels + 1) % logits.shape[1]  # a teacher that disagrees with the labels
    teacher = 200.0 * jax.nn.one_hot(c, logits.shape[1])
    expected = tau**2 * optax.softmax_cross_entropy_with_integer_labels(logits / tau, c).mean()
    np.testing.assert_allclose(distill_loss(logits, labels, teacher, 1.0, tau), expected, rtol=1e-5)


def test_distill_loss_with_one_hot_teacher_on_the_labels_is_ce_for_every_alpha():
    logits, labels, _ = _random_batch(2)
    teacher = 200.0 * jax.nn.one_hot(labels, logits.shape[1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    for alpha in (0.0, 0.3, 0.9, 1.0):
        np.testing.assert_allclose(distill_loss(logits, labels, teacher, alpha, 1.0), ce, rtol=1e-5)


def test_distill_loss_matches_a_numpy_reimplementation():
    logits, labels, teacher = _random_batch(3)
    alpha, tau = 0.7, 3.0
    s, t = np.asarray(logits, np.float64), np.asarray(teacher, np.float64)
    ce = -log_softmax(s, -1)[np.arange(len(s)), np.asarray(labels)]
    log_pt, log_ps = log_softmax(t / tau, -1), log_softmax(s / tau, -1)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    expected = np.mean((1 - alpha) * ce + alpha * tau**2 * kl)
    np.testing.assert_allclose(distill_loss(logits, labels, teacher, alpha, tau), expected, rtol=1e-5)


def test_distill_loss_pure_distillation_of_itself_is_zero():
    logits, labels, _ = _random_batch(4)
    np.testing.assert_allclose(distill_loss(logits, labels, logits, 1.0, 4.0), 0.0, atol=1e-6)


# -- make_optimizer ---------------------------------------------------------------------------------
def _lr_trace(cfg, steps_per_epoch, steps):
    """The learning rate actually applied at each step: plain SGD on loss sum(w) has update -lr."""
    tx = make_optimizer(cfg, steps_per_epoch)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    grads = {"w": jnp.ones(2)}
    update = jax.jit(tx.update)
    lrs = []
    for _ in range(steps):
        upd, state = update(grads, state, params)
        lrs.append(-float(upd["w"][0]))
    return np.array(lrs)


def _sgd(**kw):
    """Plain SGD (no momentum, no decay), lr 0.1, 10 epochs; ``kw`` overrides."""
    base = dict(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1, epochs=10)
    return dataclasses.replace(TrainConfig(), **{**base, **kw})


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
@pytest.mark.parametrize("warmup", [0, 1])
def test_every_optimizer_and_schedule_gives_finite_descending_updates(optimizer, schedule, warmup):
    cfg = dataclasses.replace(
        TrainConfig(),
        optimizer=optimizer,
        schedule=schedule,
        lr=0.05,
        epochs=4,
        warmup_epochs=warmup,
        weight_decay=1e-4,
    )
    tx = make_optimizer(cfg, steps_per_epoch=5)
    target = jnp.array([1.0, -2.0, 0.5])
    loss = lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2)

    @jax.jit
    def run(params):
        def body(carry, _):
            p, s = carry
            upd, s = tx.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, upd), s), upd["w"]

        (p, _), upds = jax.lax.scan(body, (params, tx.init(params)), None, length=20)
        return p, upds

    p0 = {"w": jnp.zeros(3)}
    p, upds = run(p0)
    assert bool(jnp.all(jnp.isfinite(upds)))
    assert float(jnp.abs(upds).max()) > 0
    assert float(loss(p)) < float(loss(p0))


def test_constant_schedule_keeps_the_learning_rate():
    np.testing.assert_allclose(_lr_trace(_sgd(schedule="constant"), 10, 100), 0.1, rtol=1e-6)


def test_step_schedule_multiplies_by_0_2_at_30_60_80_percent():
    lrs = _lr_trace(_sgd(schedule="step"), 10, 100)  # 100 steps in all
    expected = [(0, 1.0), (25, 1.0), (35, 0.2), (55, 0.2), (65, 0.04), (75, 0.04), (85, 0.008), (99, 0.008)]
    for step, factor in expected:
        np.testing.assert_allclose(lrs[step], 0.1 * factor, rtol=1e-5, err_msg=f"step {step}")


def test_cosine_schedule_starts_at_lr_halves_at_midpoint_and_decays_to_zero():
    lrs = _lr_trace(_sgd(schedule="cosine"), 10, 100)
    np.testing.assert_allclose(lrs[0], 0.1, rtol=1e-6)
    np.testing.assert_allclose(lrs[50], 0.05, rtol=1e-4)
    assert lrs[99] < 0.001
    assert (np.diff(lrs) <= 1e-9).all()  # never increases


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_warmup_rises_linearly_from_zero_to_lr(schedule):
    lrs = _lr_trace(_sgd(schedule=schedule, warmup_epochs=2), 10, 100)  # 20 warm-up steps
    np.testing.assert_allclose(lrs[0], 0.0, atol=1e-8)
    np.testing.assert_allclose(lrs[10], 0.05, rtol=1e-4)
    np.testing.assert_allclose(lrs[20], 0.1, rtol=1e-4)


def test_sgd_weight_decay_is_added_to_the_gradient_and_adamw_decouples_it():
    params = {"w": jnp.array([2.0, -4.0])}
    zero = {"w": jnp.zeros(2)}
    sgd = make_optimizer(_sgd(weight_decay=0.01), 10)
    upd, _ = sgd.update(zero, sgd.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.1 * 0.01 * params["w"], rtol=1e-5)
    adamw = make_optimizer(dataclasses.replace(_sgd(weight_decay=0.01), optimizer="adamw"), 10)
    upd, _ = adamw.update(zero, adamw.init(params), params)
    # decoupled: with a zero gradient the Adam part is zero, only -lr * wd * w is left
    np.testing.assert_allclose(upd["w"], -0.1 * 0.01 * params["w"], rtol=1e-5)


# -- Trainer.fit --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_setup(tiny_cfg, tiny_data):
    cfg = dataclasses.replace(tiny_cfg.train, epochs=3, batch_size=16, lr=1e-2, schedule="constant")
    fam = make_family("nn", MODEL, K, 1, tiny_cfg)
    trainer = Trainer(fam, cfg, len(tiny_data.x_train))
    x, y = tiny_data.x_train, tiny_data.y_train

    @functools.cache
    def fit_mode(mode):
        return trainer.fit(init_keys(3), data_keys(3), x, y, mode=mode)

    return dict(cfg=cfg, fam=fam, trainer=trainer, x=x, y=y, fit_mode=fit_mode)


@pytest.mark.parametrize("mode", ["unrolled", "vmap"])
def test_members_modes_agree_with_sequential(mode, engine_setup):
    seq = engine_setup["fit_mode"]("sequential")
    other = engine_setup["fit_mode"](mode)
    assert len(other.variables) == 3 and other.losses.shape == (3, engine_setup["cfg"].epochs)
    for a, b in zip(seq.variables, other.variables):
        assert jax.tree.structure(a) == jax.tree.structure(b)
        assert max_abs_diff(a["params"], b["params"]) < 1e-4
    np.testing.assert_allclose(other.losses, seq.losses, rtol=1e-4, atol=1e-5)


def test_members_differ_from_each_other(engine_setup):
    res = engine_setup["fit_mode"]("sequential")
    v = [m["params"] for m in res.variables]
    assert max_abs_diff(v[0], v[1]) > 1e-2 and max_abs_diff(v[1], v[2]) > 1e-2
    assert not np.allclose(res.losses[0], res.losses[1])


def test_member_is_independent_of_its_companions(engine_setup):
    # Member 1 of a 3-member fit equals a fit of that member alone (its own init and data keys).
    res = engine_setup["fit_mode"]("sequential")
    alone = engine_setup["trainer"].fit(
        init_keys(3)[1:2], data_keys(3)[1:2], engine_setup["x"], engine_setup["y"], mode="sequential"
    )
    assert max_abs_diff(alone.variables[0]["params"], res.variables[1]["params"]) < 1e-6


def test_losses_decrease_over_epochs(engine_setup):
    res = engine_setup["fit_mode"]("sequential")
    assert np.isfinite(res.losses).all()
    assert (res.losses[:, -1] < res.losses[:, 0]).all(), res.losses


def test_fit_starts_from_the_family_init_of_each_key(engine_setup):
    # A trained member stays near its own init more than near another member's init.
    fam, x = engine_setup["fam"], engine_setup["x"]
    res = engine_setup["fit_mode"]("sequential")
    inits = [fam.init(k, x[:1])["params"] for k in init_keys(3)]
    for i, m in enumerate(res.variables):
        own = max_abs_diff(m["params"], inits[i])
        assert all(own < max_abs_diff(m["params"], inits[j]) for j in range(3) if j != i)


def test_kd_with_alpha_0_is_exactly_plain_training(engine_setup):
    t, x, y = engine_setup["trainer"], engine_setup["x"], engine_setup["y"]
    teachers = np.random.RandomState(0).randn(2, len(x), K).astype(np.float32) * 3
    plain = t.fit(init_keys(2), data_keys(2), x, y, teachers=None, mode="sequential")
    kd0 = t.fit(init_keys(2), data_keys(2), x, y, teachers=teachers, alpha=0.0, tau=4.0, mode="sequential")
    for a, b in zip(plain.variables, kd0.variables):
        for u, v in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # ... while the teachers do matter once alpha > 0 (so the equality above is not vacuous)
    kd = t.fit(init_keys(2), data_keys(2), x, y, teachers=teachers, alpha=0.5, tau=4.0, mode="sequential")
    assert max_abs_diff(kd.variables[0]["params"], plain.variables[0]["params"]) > 1e-3


def test_kd_uses_each_members_own_teacher(engine_setup):
    # Three members with the same keys but different teachers, trained in one unrolled program:
    # they end up different, and reversing the teachers reverses the members.
    t, x, y = engine_setup["trainer"], engine_setup["x"], engine_setup["y"]
    teachers = np.random.RandomState(1).randn(3, len(x), K).astype(np.float32) * 3
    same_init, same_data = [jax.random.key(5)] * 3, [jax.random.key(6)] * 3
    a = t.fit(same_init, same_data, x, y, teachers=teachers, alpha=1.0, tau=2.0, mode="unrolled")
    b = t.fit(same_init, same_data, x, y, teachers=teachers[::-1], alpha=1.0, tau=2.0, mode="unrolled")
    assert max_abs_diff(a.variables[0]["params"], a.variables[2]["params"]) > 1e-3
    assert max_abs_diff(a.variables[0]["params"], b.variables[2]["params"]) < 1e-5
    assert max_abs_diff(a.variables[2]["params"], b.variables[0]["params"]) < 1e-5


def test_train_sum_of_one_member_is_single_member_with_fold_in_0(engine_setup, tiny_cfg):
    fam, cfg, x, y = engine_setup["fam"], engine_setup["cfg"], engine_setup["x"], engine_setup["y"]
    key, dkey = jax.random.key(42), jax.random.key(43)
    sum_trainer = Trainer(summed(fam, 1), cfg, len(x))
    got = sum_trainer.fit([key], [dkey], x, y, mode="sequential")
    single = engine_setup["trainer"].fit([jax.random.fold_in(key, 0)], [dkey], x, y, mode="sequential")
    leaves_sum = jax.tree.leaves(got.variables[0]["params"])
    leaves_one = jax.tree.leaves(single.variables[0]["params"])
    assert len(leaves_sum) == len(leaves_one)
    for u, v in zip(leaves_sum, leaves_one):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.losses, single.losses, rtol=1e-6)


@pytest.mark.parametrize("family", ["nn", "ntk"])
def test_train_sum_split_member_by_member_equals_the_joint_program(tiny_cfg, tiny_data, family):
    """run.sum_step=split differentiates a sum member by member (`Trainer._fit_split`); unrolled mode
    is one joint program of the whole sum: the same training, with distillation targets,
    augmentation and the mean scale, to float32 rounding."""
    cfg = dataclasses.replace(tiny_cfg.train, epochs=3, batch_size=16, lr=1e-2, schedule="constant")
    fam = make_family(family, MODEL, K, 1, tiny_cfg)
    x, y = tiny_data.x_train, tiny_data.y_train
    teachers = np.random.RandomState(2).randn(1, len(x), K).astype(np.float32)

    def noisy(key, xb):
        return xb + 0.3 * jax.random.normal(key, xb.shape)

    fits = {}
    for mode in ("sequential", "unrolled"):
        trainer = Trainer(summed(fam, 3), cfg, len(x), augment=noisy, sum_step="split")
        fits[mode] = trainer.fit([jax.random.key(7)], [jax.random.key(8)], x, y, teachers, 0.5, 2.0, mode=mode)
    split, joint = fits["sequential"], fits["unrolled"]
    assert len(split.variables[0]["params"]) == 3
    assert max_abs_diff(split.variables[0]["params"], joint.variables[0]["params"]) < 1e-4
    np.testing.assert_allclose(split.losses, joint.losses, rtol=1e-5)
    moved = max_abs_diff(
        split.variables[0]["params"], fam.init(jax.random.fold_in(jax.random.key(7), 0), x[:1])["params"]
    )
    assert moved > 1e-2  # training happened: the equality above is not two untouched inits


def test_predict_in_padded_chunks_equals_one_full_apply(engine_setup, tiny_data):
    fam = engine_setup["fam"]
    cfg = dataclasses.replace(engine_setup["cfg"], eval_batch_size=20)  # 48 = 20 + 20 + 8 (padded)
    trainer = Trainer(fam, cfg, len(tiny_data.x_train))
    variables = engine_setup["fit_mode"]("sequential").variables[0]
    x = tiny_data.x_train
    got = trainer.predict(variables, x)
    assert got.shape == (len(x), K)
    np.testing.assert_allclose(got, np.asarray(fam.apply(variables, jnp.asarray(x))), rtol=1e-5, atol=1e-5)


def test_data_order_changes_with_epoch_and_member(tiny_data, tiny_cfg):
    """Each epoch reshuffles, and each member has its own order (a bug that ignored the epoch
    index would train on one fixed order)."""
    from ntk_vs_nn import rng
    from ntk_vs_nn.engine.trainer import Trainer
    from ntk_vs_nn.families import make_family

    fam = make_family("nn", "SimpleCNN-3-1", tiny_data.num_classes, tiny_data.spatial_ndim, tiny_cfg)
    trainer = Trainer(fam, tiny_cfg.train, len(tiny_data.x_train))
    keys = [rng.member_key(rng.root_key(0), "data", i) for i in range(2)]
    n = len(tiny_data.x_train)
    e0, e1 = np.asarray(trainer._order(keys, 0, n)), np.asarray(trainer._order(keys, 1, n))
    assert e0.shape == (trainer.steps, 2, trainer.batch_size)
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0[:, 0], e0[:, 1])
    for order in (e0[:, 0], e1[:, 1]):  # a permutation: no sample twice within an epoch
        assert len(np.unique(order)) == order.size


def _fit_with(tiny_data, tiny_cfg, augment, mode="sequential"):
    from ntk_vs_nn import rng

    fam = make_family("nn", "SimpleCNN-3-1", tiny_data.num_classes, tiny_data.spatial_ndim, tiny_cfg)
    trainer = Trainer(fam, tiny_cfg.train, len(tiny_data.x_train), augment=augment)
    root = rng.root_key(0)
    res = trainer.fit(
        [rng.member_key(root, "init", i) for i in range(2)],
        [rng.member_key(root, "data", i) for i in range(2)],
        tiny_data.x_train,
        tiny_data.y_train,
        mode=mode,
    )
    return [jax.flatten_util.ravel_pytree(v["params"])[0] for v in res.variables]


def test_augmentation_is_applied_per_step_and_identical_across_member_modes(tiny_data, tiny_cfg):
    import jax.flatten_util  # noqa: F401

    plain = _fit_with(tiny_data, tiny_cfg, None)
    identity = _fit_with(tiny_data, tiny_cfg, lambda key, x: x)
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(identity[0]))

    def noisy(key, x):  # a key-dependent augmentation: different per member, epoch and step
        return x + 0.5 * jax.random.normal(key, x.shape)

    aug_seq = _fit_with(tiny_data, tiny_cfg, noisy, "sequential")
    assert float(jnp.abs(aug_seq[0] - plain[0]).max()) > 1e-4
    for mode in ("unrolled", "vmap"):
        other = _fit_with(tiny_data, tiny_cfg, noisy, mode)
        for a, b in zip(aug_seq, other):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["nn", "ntk"])
def test_bfloat16_members_train_and_keep_float32_params(tiny_cfg, tiny_data, family):
    """model.dtype=bfloat16: the families train (loss falls), params and optimiser state stay float32."""
    cfg = dataclasses.replace(tiny_cfg, model=dataclasses.replace(tiny_cfg.model, dtype="bfloat16"))
    fam = make_family(family, "SimpleCNN-3-1", tiny_data.num_classes, 1, cfg)
    tc = dataclasses.replace(cfg.train, epochs=4)
    trainer = Trainer(fam, tc, len(tiny_data.x_train))
    got = trainer.fit([jax.random.key(3)], [jax.random.key(4)], tiny_data.x_train, tiny_data.y_train)
    assert {a.dtype for a in jax.tree.leaves(got.variables[0]["params"])} == {jnp.dtype("float32")}
    assert np.all(np.isfinite(got.losses)) and got.losses[0, -1] < got.losses[0, 0]
    assert trainer.predict(got.variables[0], tiny_data.x_test).dtype == jnp.float32


# -- full-batch gradient descent (batch_size >= n_train): one scan over the epochs, lr_scales, lambda_max ---
def test_full_batch_is_plain_gradient_descent_with_per_member_lr_scales(tiny_cfg, tiny_data):
    import jax.flatten_util  # noqa: F401

    from ntk_vs_nn.engine.optim import lambda_max

    x, y = tiny_data.x_train, tiny_data.y_train
    sgd = dataclasses.replace(tiny_cfg.train, optimizer="sgd", momentum=0.0, weight_decay=0.0, epochs=3, lr=0.05,
                              schedule="constant", batch_size=len(x))  # fmt: skip
    fam = make_family("nn", MODEL, K, 1, tiny_cfg)
    trainer = Trainer(fam, sgd, len(x))
    assert trainer.full_batch and trainer.steps == 1
    keys = init_keys(2)
    got = trainer.fit(keys, data_keys(2), x, y, mode="sequential", lr_scales=[1.0, 2.0])
    # the same members by hand: p <- p - lr * scale * grad(mean CE) on the whole set, in order
    for i, scale in enumerate((1.0, 2.0)):
        v = fam.init(keys[i], jnp.asarray(x[:1]))
        loss = lambda p, v=v: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            fam.apply({"params": p, "state": v["state"]}, jnp.asarray(x)), jnp.asarray(y)
        ).mean()
        p = v["params"]
        for _ in range(3):
            p = jax.tree.map(lambda a, g: a - 0.05 * scale * g, p, jax.grad(loss)(p))
        assert max_abs_diff(got.variables[i]["params"], p) < 1e-5
    vm = trainer.fit(keys, data_keys(2), x, y, mode="vmap", lr_scales=[1.0, 2.0])
    for a, b in zip(got.variables, vm.variables):
        assert max_abs_diff(a["params"], b["params"]) < 1e-4
    assert got.losses.shape == (2, 3) and np.all(np.diff(got.losses[0]) < 0)
    # lambda_max: the top eigenvalue of J^T J / n (J of all logits w.r.t. the params)
    v = fam.init(keys[0], jnp.asarray(x[:1]))
    flat, unravel = jax.flatten_util.ravel_pytree(v["params"])
    J = jax.jacrev(lambda f: fam.apply({"params": unravel(f), "state": v["state"]}, jnp.asarray(x)))(flat)
    J = np.asarray(J, np.float64).reshape(-1, flat.size)
    want = np.linalg.eigvalsh(J @ J.T / len(x))[-1]  # the same nonzero spectrum as J^T J / n
    assert float(lambda_max(fam, v, jnp.asarray(x), iters=300)) == pytest.approx(want, rel=1e-3)


# -- the train-sum model's step (protocol.sum_grad) -------------------------------------------------
def _copies_and_single(tiny_data, family, cfg, L=3, epochs=100):
    """Test predictions of (the train-sum model of L identical copies of one member, that member trained
    alone, that member at init), trained as `protocols.Row` trains them under ``cfg`` (the row's sum
    trainer: `summed` with ``protocol.sum_scale`` and the gradient scale of ``protocol.sum_grad``)."""
    import tempfile

    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    cfg = dataclasses.replace(
        cfg,
        kernel=dataclasses.replace(cfg.kernel, epochs=epochs),
        train=dataclasses.replace(cfg.train, epochs=epochs, batch_size=16),
        protocol=dataclasses.replace(cfg.protocol, members=L),
    )
    row = Row(family, MODEL, cfg, tiny_data, Store.prepare(tempfile.mkdtemp()))
    key, init = jax.random.key(11), row.fam.init
    row.fam = row.fam._replace(init=lambda _, x: init(key, x))  # every member starts from one init
    single = Trainer(row.fam, row.trainer.cfg, len(tiny_data.x_train))
    x, y, x_test = tiny_data.x_train, tiny_data.y_train, tiny_data.x_test
    one = single.fit([key], [jax.random.key(5)], x, y, mode="sequential").variables[0]
    sum_trainer = row.trainer_for("sum")
    copies = sum_trainer.fit([key], [jax.random.key(5)], x, y, mode="sequential").variables[0]
    start = single._init(key, x[:1])
    return sum_trainer.predict(copies, x_test), single.predict(one, x_test), single.predict(start, x_test)


@pytest.mark.parametrize(
    "family,preset", [("ntk", None), ("gp", None), ("ntk", "paper-cifar10"), ("nn", "paper-cifar10")]
)
def test_identical_copies_as_the_train_sum_follow_their_member(tiny_cfg, tiny_data, family, preset):
    """L identical copies of one member, trained as the train-sum model with the default settings
    (sum_scale=mean, sum_grad=member; the kernel families' default optimiser, or the paper-cifar10
    preset's SGD with momentum, weight decay and step decay), follow that member's trajectory: after 300
    steps their mean predicts what the member alone does, to 1e-5. With the plain gradient of the mean
    (sum_grad=joint, the older runs) the sum's step is L x smaller under SGD: far off."""
    from ntk_vs_nn.config.presets import get_preset

    cfg = tiny_cfg
    if preset:
        paper = get_preset(preset)
        cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(paper.train, augment="none"),
                                  kernel=paper.kernel, protocol=dataclasses.replace(tiny_cfg.protocol))  # fmt: skip
    assert cfg.protocol.sum_grad == "member" and cfg.protocol.sum_scale == "mean"
    if family != "nn":
        assert cfg.train_for(family).optimizer == "sgd"  # the default: gradient descent on the linearised model
    got, member, start = _copies_and_single(tiny_data, family, cfg)
    scale = float(np.abs(member).max())
    assert float(np.abs(member - start).max()) > 1e-2 * scale  # the member moved
    assert float(np.abs(got - member).max()) < 1e-5 * scale
    joint = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, sum_grad="joint"))
    off, _, _ = _copies_and_single(tiny_data, family, joint)
    assert float(np.abs(off - member).max()) > 1e-2 * float(np.abs(member - start).max())


def test_sum_grad_scale_makes_the_sum_kernel_the_members_mean():
    from ntk_vs_nn.config import Config, ProtocolConfig

    for scale, grad in [("mean", "member"), ("sum", "member"), ("mean", "joint"), ("sum", "joint")]:
        cfg = Config(protocol=ProtocolConfig(members=4, sum_scale=scale, sum_grad=grad))
        c = 1 / 4 if scale == "mean" else 1.0
        kernel_factor = c**2 * cfg.sum_grad_scale()  # G's kernel = c^2 s sum_l Theta_l
        assert kernel_factor == pytest.approx(1 / 4 if grad == "member" else c**2)


def test_shared_data_order_gives_every_single_member_0s_order(tiny_data, tiny_cfg, tmp_path):
    """protocol.data_order=shared: each single draws member 0's data order (the train-sum model's), its own
    init; single 0 is the same unit either way, single 1 trains on another order than with its own."""
    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    preds = {}
    for order in ("member", "shared"):
        cfg = dataclasses.replace(tiny_cfg, protocol=dataclasses.replace(tiny_cfg.protocol, data_order=order))
        row = Row("nn", MODEL, cfg, tiny_data, Store.prepare(str(tmp_path / order)))
        keys = row.data_keys(3)
        same = [bool(np.array_equal(jax.random.key_data(k), jax.random.key_data(keys[0]))) for k in keys]
        assert same == ([True, False, False] if order == "member" else [True, True, True])
        preds[order] = [p["test"] for p in row.single()]
    np.testing.assert_array_equal(preds["member"][0], preds["shared"][0])
    assert float(np.abs(preds["member"][1] - preds["shared"][1]).max()) > 1e-3
