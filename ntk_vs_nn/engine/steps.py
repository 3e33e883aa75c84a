"""The compiled optimiser step of M members (`Steps`, a mixin of `Trainer`): each member's training batch
(its augmentation, mixup, online teacher and perturbed distillation input), its loss, gradient and
update, written as a Python loop in the trace (unrolled) or vmapped over a member axis; for full-batch
training, one ``lax.scan`` over every epoch. The per-epoch data order and the keys of each step's
transformations are functions of the member's data key and the epoch and step indices alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ntk_vs_nn import rng
from ntk_vs_nn.engine.inputs import Batch
from ntk_vs_nn.engine.losses import distill_loss


def _augment_key(data_key, epoch: int):
    """A member's augmentation key of one epoch (the step folds in its index)."""
    return jax.random.fold_in(jax.random.fold_in(data_key, epoch), rng.STEP_TAGS["augment"])


class Steps:
    """`Trainer`'s compiled steps; uses its ``family``, ``cfg``, ``tx``, ``inputs`` and ``targets``
    (`engine.inputs`), ``teacher``, ``steps``, ``batch_size``, ``full_batch``, ``_scaled`` and
    ``_step_cache``."""

    # -- one optimiser step of M members, unrolled in the trace ---------------------------------
    # The epoch loop stays in Python: on XLA:CPU a lax.scan over steps ran ~12x slower per step
    # than the same jitted step called from Python (benchmarks/ensemble_members.py), and the
    # step only takes device arrays, so the loop never waits for the host.
    def _view(self, x, y, teacher, ib, key):
        """One member's training batch: ``(x_b, y_b, teacher logits, mix, x_kd)``. ``ib``: the batch's
        indices (None: the whole set); ``key``: the step's transformation key; ``teacher``: the fixed
        (N, k) targets, or the online teacher's variables (a list of members). The trainer's input chain
        transforms the batch, then its teacher gives the targets on it (`engine.inputs`); ``x_kd`` is the
        KD term's own input (a perturbation) or None."""
        xb, yb = (x, y) if ib is None else (x[ib], y[ib])
        b = self.inputs(key, Batch(xb, yb))
        tb, x_kd = self.targets(key, b, teacher, ib)
        return b.x, b.y, tb, b.mix, x_kd

    def _student(self, variables, x):
        """The student's logits: (B, k), or (M, B, k) per member of a BatchEnsemble family."""
        if self.family.members:
            return self.family.apply_members(variables, x)
        return self.family.apply(variables, x)

    def _step(self, m: int, scaled: bool = False):
        tx = self.tx

        def step(carries, states, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
            new, losses = [], []
            for i, ((params, opt_state), state) in enumerate(zip(carries, states)):
                ib = None if idx is None else idx[s, i]  # None: full batch, the whole set in its order
                key = None if idx is None else jax.random.fold_in(aug_keys[i], s)
                xb, yb, tb, mix, x_kd = self._view(x, y, teachers[i], ib, key)

                def loss_fn(p, state=state, xb=xb, yb=yb, tb=tb, mix=mix, x_kd=x_kd):
                    v = {"params": p, "state": state}
                    kd = None if x_kd is None else self._student(v, x_kd)
                    return distill_loss(self._student(v, xb), yb, tb, alpha, tau, mix, kd)

                loss, grads = jax.value_and_grad(loss_fn)(params)
                updates, opt_state = tx.update(grads, opt_state, params)
                if scaled:  # per-member learning rates (only then: another program, other roundings)
                    updates = jax.tree.map(lambda u, i=i: u * scales[i], updates)
                new.append((optax.apply_updates(params, updates), opt_state))
                losses.append(loss)
            return new, jnp.stack(losses)

        return step

    def _compiled(self, m: int, mode: str):
        scaled = self._scaled  # set by `fit`: per-member learning rates asked for
        key = (m, mode, self.full_batch, scaled)
        if key not in self._step_cache:
            if mode == "vmap":
                one = self._step(1, scaled)

                def fn(carry, state, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
                    def single(c, st, ix, t, k, sc):
                        ix = None if ix is None else ix[:, None]
                        t = [t] if self.teacher is not None else t[None]  # online: one student's teacher list
                        out, loss = one([c], [st], ix, s, x, y, t, alpha, tau, [k], sc[None])
                        return out[0], loss[0]

                    axes = (0, 0, None if idx is None else 1, 0, 0, 0)
                    return jax.vmap(single, in_axes=axes)(carry, state, idx, teachers, aug_keys, scales)

            else:
                fn = self._step(m, scaled)
            if self.full_batch:  # every epoch is one step on the same data: one scan over the epochs
                step_fn = fn

                def fn(carry, state, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
                    def body(c, _):
                        return step_fn(c, state, None, 0, x, y, teachers, alpha, tau, aug_keys, scales)

                    return jax.lax.scan(body, carry, None, length=self.cfg.epochs)

            self._step_cache[key] = jax.jit(fn, donate_argnums=0)
        return self._step_cache[key]

    def _order_fn(self):
        steps, bs = self.steps, self.batch_size

        def order(data_keys, epoch_index, n):
            """(steps, M, bs) sample indices: each member's own permutation for this epoch."""
            return jnp.stack(
                [
                    jax.random.permutation(jax.random.fold_in(k, epoch_index), n)[: steps * bs].reshape(steps, bs)
                    for k in data_keys
                ],
                axis=1,
            )

        return jax.jit(order, static_argnums=2)
