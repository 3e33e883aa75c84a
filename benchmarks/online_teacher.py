"""What a KD student of an online teacher costs, and whether the input transformation adds to it.

Command: ``.venv/bin/python benchmarks/online_teacher.py`` (``make bench``). For the ``fmnist`` preset's
kernel rows (PlainCNN-2-1 linearised at init: ``ntk`` and ``gp``), one KD student of a 10-member
ensemble trains 1 epoch on 1,280 Fashion-MNIST-shaped images (10 steps of batch 128; pixel values do
not change the cost) with each kind of distillation input of `protocols.Row.student_inputs`:

  fixed     targets computed once on the clean images (no transformation: ``kd_inputs=clean``);
  online    the teacher evaluated on each batch, clean inputs (``protocol.teacher=online``);
  augment   online on crop + flip (pad 2 for 28 px), ``kd_inputs=augment``;
  mixup     online on mixup (alpha ``protocol.kd_mixup``), ``kd_inputs=mixup``.

Each is the fastest of 2 timed fits after a compile fit, in this process, one after another.
ratio = the slower of augment / mixup over online on clean inputs (goal <= 1.2: the transformation is
a small part of a step whose cost is the 10 teacher members). The online / fixed factor is reported
beside it. Writes results/benchmarks/online_teacher.json.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from _common import best_of, write

from ntk_vs_nn import rng
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config.presets import get_preset
from ntk_vs_nn.data.transforms import crop_pad_for, make_augment
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family

L, N_TRAIN, SIZE, CLASSES, REPEATS = 10, 1280, 28, 10, 2
FAMILIES = ("ntk", "gp")
GOAL = 1.2


def main():
    cfg = get_preset("fmnist")
    model = cfg.table.ntk_models[0]
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (N_TRAIN, SIZE, SIZE, 1), jnp.float32)
    y = jax.random.randint(ky, (N_TRAIN,), 0, CLASSES)
    root = rng.root_key(0)
    alpha, tau, rule = cfg.protocol.kd_alpha, cfg.kd_tau_for(CLASSES), cfg.protocol.ensemble_rule
    aug = make_augment("crop_flip", 2, SIZE, crop_pad_for(SIZE))
    keys = [rng.member_key(root, "init", 100)], [rng.member_key(root, "data", 100)]
    ms, factors = {}, {}
    for fam_name in FAMILIES:
        fam = make_family(fam_name, model, CLASSES, 2, cfg)
        tcfg = dataclasses.replace(cfg.train_for(fam_name, student=True), epochs=1)
        members = [fam.init(rng.member_key(root, "init", i), x[:2]) for i in range(L)]
        fixed_targets = metrics.combine([np.asarray(fam.apply(v, x)) for v in members], rule)[None]
        online = dict(teacher=fam, teacher_rule=rule)
        cases = {
            "fixed": (Trainer(fam, tcfg, N_TRAIN), fixed_targets),
            "online": (Trainer(fam, tcfg, N_TRAIN, **online), [members]),
            "augment": (Trainer(fam, tcfg, N_TRAIN, augment=aug, **online), [members]),
            "mixup": (Trainer(fam, tcfg, N_TRAIN, mixup=cfg.protocol.kd_mixup, **online), [members]),
        }
        ms[fam_name] = {}
        for name, (trainer, teachers) in cases.items():

            def fit():
                res = trainer.fit(*keys, x, y, teachers=teachers, alpha=alpha, tau=tau, mode="sequential")
                jax.block_until_ready(res.variables[0]["params"])  # its params waited for

            ms[fam_name][name] = round(best_of(fit, REPEATS)["run_s"] / trainer.steps * 1e3, 2)
            print(fam_name, name, ms[fam_name][name], "ms/step", flush=True)
        m = ms[fam_name]
        factors[fam_name] = {
            "transformed_over_online": round(max(m["augment"], m["mixup"]) / m["online"], 3),
            "online_over_fixed": round(m["online"] / m["fixed"], 3),
        }
    ratio = max(f["transformed_over_online"] for f in factors.values())
    write(
        "online_teacher",
        max(ms[f]["augment"] for f in FAMILIES),
        "ms/step",
        GOAL,
        ratio,
        ratio <= GOAL,
        model=model,
        teacher_members=L,
        batch_size=cfg.train.batch_size,
        ms_per_step=ms,
        factors=factors,
    )


if __name__ == "__main__":
    main()
