"""The config hash that names a run's units, and its older forms.

A unit (a trained model's predictions and record) is named by the hash of everything in its config that
changes its numbers (`config_hash`): not the table layout, the verdict thresholds or how it executes, and
for the teachers (single, ensemble, train-sum) not the fields only students read (`STUDENT_FIELDS`), so
configs that differ in how students are distilled share their teachers in one store.

Fields were added to the config after results were recorded. Each generation of them (`ADDED_LATER`)
carries the value that reproduces the older behaviour; the hash "as of generation g" leaves out the fields
of generation g and later while they hold that value, so a store or a committed folder made before a
field existed still resolves (`science_hashes`: the hash, then every older form).
"""

from __future__ import annotations

import dataclasses

from ntk_vs_nn.config.base import LATER_SECTION_FIELDS, hash_dict

# Fields added after results were recorded, by generation, with the value that reproduces the
# older behaviour: the hash of an older generation leaves them out at that value, so records of
# results/quick-mnist1d (commit 9b9151a, before generation 0) and results/fmnist-fashion_mnist
# (before generation 1) still belong to their configs.
ADDED_LATER: list[dict[tuple[str, str], object]] = [
    {
        ("data", "source"): "auto",
        ("data", "data_dir"): "",
        ("train", "augment"): "none",
        ("train", "augment_kernels"): False,
    },
    {("model", "dtype"): "float32", ("kernel", "lr_units"): "lambda_max"},
    {("kernel", "trace"): True},
    {("protocol", "kd_students"): 1, ("protocol", "student_epochs"): 0, ("kernel", "student_steps"): 0},
    {("kernel", "epochs"): 0, ("kernel", "weights_lr"): 0.0, ("kernel", "student_epochs"): 0},
    {
        **{("train", name): neutral for name, neutral in LATER_SECTION_FIELDS["TrainConfig"].items()},
        ("protocol", "kd_inputs"): "auto",
        ("protocol", "kd_mixup"): 1.0,
        ("protocol", "teacher"): "auto",
    },
    {
        ("protocol", "kd_perturb"): "none",
        ("protocol", "kd_eta"): 1 / 255,
        ("protocol", "kd_student"): "",
        ("protocol", "kd_memberwise"): "auto",
        ("kernel", "gp_lr"): 0.0,
    },
    {
        ("protocol", "sum_grad"): "joint",
        ("kernel", "optimizer"): "train",
        ("kernel", "weights_lr_units"): "absolute",
        ("kernel", "momentum"): 0.99,  # (read only by kernel.optimizer=sgd, which did not exist)
    },
    {("protocol", "control"): "off", ("protocol", "data_order"): "member"},
]
TEACHER_HASH_SINCE = 6  # the generation of fields the teacher hash was introduced with (older forms: none)
# The fields only KD and SD students read: left out of the teachers' hash (`Config.teacher_hash`).
STUDENT_FIELDS = {
    "protocol": ("kd_alpha", "kd_tau", "sd_students", "kd_students", "student_epochs", "kd_inputs", "kd_mixup",
                 "teacher", "kd_perturb", "kd_eta", "kd_student", "kd_memberwise", "control"),
    "kernel": ("student_steps", "student_epochs"),
}  # fmt: skip
# the kernel fields of the weights backend
WEIGHTS_KERNEL_FIELDS = ("epochs", "weights_lr", "student_epochs", "gp_lr", "optimizer", "weights_lr_units",
                         "momentum")  # fmt: skip
UNREAD = ("kd_eta", "kd_mixup")  # protocol fields read only under another field's value


def neutral_when_missing() -> dict:
    """{(section, field): the value a saved config.json made before the field existed ran with}:
    what `from_dict` fills in (not the class default, where that differs: sum_grad, optimizer)."""
    return {key: v for added in ADDED_LATER for key, v in added.items()}


def config_hash(cfg, generations: int, students: bool = True, unread: bool = True) -> str:
    """The hash of ``cfg`` as it was when only the first ``generations`` generations of fields existed;
    ``students=False``: the teacher hash (student fields left out, marked as such); ``unread=False``: the
    form from before fields nothing reads were set to their defaults (`UNREAD`)."""
    d = cfg.to_dict()
    for key in ("preset", "table", "messages"):
        d.pop(key)
    d["run"] = {"seed": cfg.run.seed}
    # fields read only under another field's value: at their default otherwise, so setting one
    # where nothing reads it shares the units (plain KD students of a kd_eta sweep, say)
    p, defaults = d["protocol"], type(cfg.protocol)
    if unread and p["kd_perturb"] == "none":
        p["kd_eta"] = defaults.kd_eta
    if unread and p["kd_inputs"] not in ("mixup", "augment_mixup"):
        p["kd_mixup"] = defaults.kd_mixup
    # control adds units of its own (protocol "control") and changes which comparison decides 5 and 6,
    # never another unit's numbers: out of the hash, so the units of older stores are these units
    p.pop("control")
    p.pop("wide_model")  # the same: a unit of its own (protocol "wide", its id names the network)
    if cfg.kernel.backend == "weights":  # only the kernel families' weight-space budget counts
        d["kernel"] = {k: d["kernel"][k] for k in WEIGHTS_KERNEL_FIELDS}
    else:
        for k in ("tile_size", *WEIGHTS_KERNEL_FIELDS):
            d["kernel"].pop(k)
    for added in ADDED_LATER[generations:]:
        for (section, name), neutral in added.items():
            if d.get(section, {}).get(name, None) == neutral:
                d[section].pop(name)
    if not students:
        for section, names in STUDENT_FIELDS.items():
            for name in names:
                d.get(section, {}).pop(name, None)
        d["units"] = "teachers"
    # an emptied section: as if it never existed
    return hash_dict({k: v for k, v in d.items() if v != {}}, strip_later=False)


def teacher_hashes(cfg) -> tuple[str, ...]:
    """The teacher hash, then its older forms (one per generation of fields since it exists)."""
    gens = range(len(ADDED_LATER), TEACHER_HASH_SINCE - 1, -1)
    return tuple(dict.fromkeys(config_hash(cfg, g, students=False) for g in gens))


def science_hashes(cfg) -> tuple[str, ...]:
    """The hash, then the older forms: for each generation g of `ADDED_LATER`, the hash that leaves out the
    fields added in generation g and later while they hold their neutral value; then the same with the
    fields nothing reads as they were set (records made before `UNREAD` was neutralised); then the teacher
    hash and its older forms (the same generations). Records under any of these hashes belong to ``cfg``."""
    gens = range(len(ADDED_LATER), -1, -1)
    forms = [config_hash(cfg, g) for g in gens] + [config_hash(cfg, g, unread=False) for g in gens]
    return tuple(dict.fromkeys(forms + list(teacher_hashes(cfg))))


def neutral_student_hashes(cfg) -> tuple[str, ...]:
    """The hash forms of ``cfg`` with the student fields added with the teacher hash or later at their
    neutral values (a store made before the teacher hash cannot have recorded other values), when that
    differs from ``cfg`` (else none): where such a store holds this config's teacher units
    (`protocols.Row._adopt`)."""
    neutral = {}
    for added in ADDED_LATER[TEACHER_HASH_SINCE - 1 :]:
        for (section, name), value in added.items():
            if name in STUDENT_FIELDS.get(section, ()):
                neutral.setdefault(section, {})[name] = value
    sections = {s: dataclasses.replace(getattr(cfg, s), **kw) for s, kw in neutral.items()}
    base = dataclasses.replace(cfg, **sections)
    if base == cfg:
        return ()
    return tuple(dict.fromkeys(config_hash(base, g) for g in range(len(ADDED_LATER), -1, -1)))
