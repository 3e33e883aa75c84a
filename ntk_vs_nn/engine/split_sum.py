"""The train-sum model (a summed family, ``family.parts``) in sequential mode with ``run.sum_step=split``:
differentiated member by member (`SplitSum`, a mixin of `Trainer`).

The loss of G = factor * sum_l f_l depends on every member, but its gradient w.r.t. member l is
factor * J_l^T dL/dG: per step, each member's forward (keeping its vjp residuals), dL/dG once,
each member's backward, then one optimiser update of the whole list (optax's transforms act
leaf by leaf, so this is the joint program's update). Each member's forward and backward is a
one-member program, as for a single member: on one core the joint program of 10 ResNet-10-1
members ran 1.63x the ten singles' time, this 1.18x (benchmarks/ensemble_members.py, train_sum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ntk_vs_nn.engine import sharding
from ntk_vs_nn.engine.losses import distill_loss
from ntk_vs_nn.engine.steps import _augment_key


class SplitSum:
    """`Trainer`'s member-by-member training of a summed family; uses its ``family``, ``cfg``, ``tx``,
    ``steps``, ``batch_size``, ``progress``, ``_view``, ``_order``, ``_opt_init``, ``_scaled`` and
    ``_step_cache``."""

    def _split_fns(self):
        if "split" not in self._step_cache:
            member, n, factor = self.family.parts
            tx = self.tx

            def fwd(params, state, xb):
                return jax.vjp(lambda p: member.apply({"params": p, "state": state}, xb), params)

            def batch(idx, s, x, y, teachers, aug_key):
                return self._view(x, y, teachers[0], idx[s, 0], jax.random.fold_in(aug_key, s))[:4]

            def head(logits, yb, tb, mix, alpha, tau):
                g_sum = factor * sum(logits)
                loss, g = jax.value_and_grad(lambda o: distill_loss(o, yb, tb, alpha, tau, mix))(g_sum)
                return loss, factor * g

            def update(grads, opt_state, params, scale):
                updates, opt_state = tx.update(grads, opt_state, params)
                if self._scaled:
                    updates = jax.tree.map(lambda u: u * scale, updates)
                return optax.apply_updates(params, updates), opt_state

            self._step_cache["split"] = (
                jax.jit(fwd), jax.jit(batch), jax.jit(head), jax.jit(lambda vjp, g: vjp(g)[0]),
                jax.jit(update, donate_argnums=(1, 2)),
            )  # fmt: skip
        return self._step_cache["split"]

    def _fit_split(self, variables, data_keys, x, y, teachers, alpha, tau, scales, desc, snap=None):
        """`Trainer.fit` of one summed family (``family.parts``) in sequential mode: ``(variables, (1, epochs)
        losses)``, the joint program's numbers up to float rounding (tests/engine/test_engine.py). On a host split
        into several CPU devices each batch is split over them, as in `fit` (params replicated, back on one
        device at the end)."""
        fwd, batch, head, back, update = self._split_fns()
        (v,) = variables
        params, states = jax.tree.map(jnp.copy, v["params"]), v["state"]
        opt_state = self._opt_init(v["params"])
        dp = sharding.data_mesh(self.batch_size)
        if dp is not None:
            x, y, teachers, params, states, opt_state = sharding.replicate(
                (x, y, teachers, params, states, opt_state), dp
            )
        bar = tqdm(total=self.cfg.epochs, desc=desc, leave=False, disable=not self.progress)
        losses, start = [], 0
        got = snap and snap.load((params, opt_state), self.cfg.epochs)
        if got:
            start, (params, opt_state), done = got
            losses = [jnp.asarray(v) for v in done]
            bar.update(start)
        for e in range(start, self.cfg.epochs):
            idx = self._order(data_keys, e, x.shape[0])
            aug = _augment_key(data_keys[0], e)
            if dp is not None:  # (steps, 1, batch): the batch axis over the data devices
                idx, aug = sharding.shard(idx, dp, 2), sharding.replicate(aug, dp)
            epoch_losses = []
            for s in range(self.steps):
                xb, yb, tb, mix = batch(idx, s, x, y, teachers, aug)
                outs = [fwd(p, st, xb) for p, st in zip(params, states)]
                loss, g = head([o[0] for o in outs], yb, tb, mix, alpha, tau)
                grads = [back(o[1], g) for o in outs]
                del outs  # the residuals: free them before the update
                params, opt_state = update(grads, opt_state, params, scales[0])
                epoch_losses.append(loss)
            losses.append(jnp.stack(epoch_losses).mean())
            bar.update(1)
            if snap:
                snap.save(e + 1, self.cfg.epochs, (params, opt_state), jnp.stack(losses), e + 1 == self.cfg.epochs)
        bar.close()
        if dp is not None:  # ordinary single-device arrays again, as the other modes give
            params = jax.device_put(params, jax.local_devices()[0])
        jax.block_until_ready(params)
        out = [{"params": params, "state": v["state"]}]
        return out, np.asarray(jnp.stack(losses))[None]
