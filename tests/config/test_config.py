"""`--set` overrides: type checks, unknown keys, choices; what the science hash covers."""

import dataclasses
import os

import pytest

from ntk_vs_nn.config import Config, UserError, apply_overrides, hashing


@pytest.mark.parametrize(
    "item",
    [
        "train.epochs=abc",  # int field, not a number
        "train.epochs=1.5",  # int field, a float
        "train.epochs=True",  # int field, a bool (bool is an int subclass in Python)
        "run.progress=1",  # bool field, an int
        "run.progress=yes",  # bool field, a bare word
        "train.lr=abc",  # float field, not a number
        "train.lr=True",  # float field, a bool
    ],
)
def test_override_with_wrong_type_is_a_user_error(item):
    with pytest.raises(UserError):
        apply_overrides(Config(), [item])


def test_int_override_sets_an_int():
    cfg = apply_overrides(Config(), ["train.epochs=7"])
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int


def test_bool_override_accepts_python_literals():
    assert apply_overrides(Config(), ["run.progress=False"]).run.progress is False
    off = apply_overrides(Config(), ["run.progress=False"])
    assert apply_overrides(off, ["run.progress=True"]).run.progress is True


@pytest.mark.parametrize("word,value", [("false", False), ("FALSE", False), ("true", True), ("True", True)])
def test_bool_override_accepts_true_and_false_in_any_case(word, value):
    start = Config(kernel=dataclasses.replace(Config().kernel, trace=not value))
    assert apply_overrides(start, [f"kernel.trace={word}"]).kernel.trace is value


def test_float_field_accepts_an_int_and_stores_a_float():
    cfg = apply_overrides(Config(), ["train.lr=1"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_tuple_field_from_comma_separated_names():
    cfg = apply_overrides(Config(), ["table.nn_models=ResNet-10-1,ResNet-28-10"])
    assert cfg.table.nn_models == ("ResNet-10-1", "ResNet-28-10")
    cfg = apply_overrides(Config(), ["table.ntk_families=a,b"])
    assert cfg.table.ntk_families == ("a", "b")


def test_tuple_field_from_a_single_name_is_a_one_tuple():
    cfg = apply_overrides(Config(), ["table.ntk_models=SimpleCNN-10-3"])
    assert cfg.table.ntk_models == ("SimpleCNN-10-3",)


def test_string_field_keeps_a_bare_word():
    cfg = apply_overrides(Config(), ["train.optimizer=sgd", "dataset=npz:/tmp/x.npz"])
    assert cfg.train.optimizer == "sgd"
    assert cfg.dataset == "npz:/tmp/x.npz"


def test_overrides_apply_in_order_and_leave_other_fields():
    base = Config()
    cfg = apply_overrides(base, ["train.lr=0.5", "train.lr=0.25"])
    assert cfg.train.lr == 0.25
    assert cfg.train.epochs == base.train.epochs
    assert base.train.lr != 0.25  # the input config is not mutated


@pytest.mark.parametrize("item", ["train.nosuchfield=1", "nosuchsection.lr=1", "lr=1", "train.lr.x=1"])
def test_unknown_key_is_a_user_error_listing_valid_keys(item):
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), [item])
    msg = str(err.value)
    assert item.split("=")[0] in msg
    assert "train.lr" in msg and "protocol.members" in msg and "run.seed" in msg


def test_override_without_equals_sign_is_a_user_error():
    with pytest.raises(UserError):
        apply_overrides(Config(), ["train.lr"])


@pytest.mark.parametrize(
    "item",
    [
        "train.optimizer=foo",
        "train.schedule=linear",
        "model.norm=batch",
        "protocol.ensemble_rule=median",
        "protocol.sum_scale=max",
        "run.members=threads",
    ],
)
def test_bad_choice_is_a_user_error_naming_the_choices(item):
    key, value = item.split("=")
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), [item])
    assert key in str(err.value) and value in str(err.value)


@pytest.mark.parametrize(
    "item",
    ["train.epochs=0", "protocol.members=0", "train.lr=0", "data.val_fraction=1.0", "protocol.kd_alpha=1.5"],
)
def test_out_of_range_value_is_a_user_error(item):
    with pytest.raises(UserError):
        apply_overrides(Config(), [item])


@pytest.mark.parametrize(
    "item", ["train.lr=0.01", "run.seed=1", "train.epochs=3", "data.n_train=100", "protocol.kd_alpha=0.5"]
)
def test_science_hash_changes_with_what_changes_the_numbers(item):
    assert apply_overrides(Config(), [item]).science_hash() != Config().science_hash()


@pytest.mark.parametrize(
    "item",
    [
        "table.nn_models=ResNet-28-10",
        "table.ntk_families=ntk",
        "run.progress=False",
        "run.members=vmap",
        "run.members=sequential",
    ],
)
def test_science_hash_ignores_table_layout_and_execution(item):
    assert apply_overrides(Config(), [item]).science_hash() == Config().science_hash()


@pytest.mark.parametrize(
    "unread, reader",
    [("protocol.kd_eta=0.03", "protocol.kd_perturb=gaussian"), ("protocol.kd_mixup=0.2", "protocol.kd_inputs=mixup")],
)
def test_a_field_nothing_reads_leaves_the_hash_alone_until_its_reader_is_on(unread, reader):
    """kd_eta only matters to a perturbation, kd_mixup only to mixup inputs: a plain-KD student of a
    kd_eta sweep is the same unit as the default's; once the reader is on, the value counts. Records
    made under the old hash (the value in it) are still found (`science_hashes`)."""
    base, read = Config(), apply_overrides(Config(), [reader])
    assert apply_overrides(base, [unread]).science_hash() == base.science_hash()
    assert apply_overrides(read, [unread]).science_hash() != read.science_hash()
    legacy = apply_overrides(base, [unread])._hash(len(hashing.ADDED_LATER), unread=False)
    assert legacy != base.science_hash() and legacy in apply_overrides(base, [unread]).science_hashes()


def test_science_hash_is_the_same_in_another_process_with_another_string_hash_seed():
    """A unit's id must not depend on the process (Python's per-process string hashing, set order):
    a resumed run in a new process finds its units by it."""
    import subprocess
    import sys

    from ntk_vs_nn.config.presets import PRESETS

    code = ("from ntk_vs_nn.config.presets import PRESETS; "
            "print(' '.join(PRESETS[p]().science_hash() for p in ('quick', 'minutes', 'fmnist')))")  # fmt: skip
    here = " ".join(PRESETS[p]().science_hash() for p in ("quick", "minutes", "fmnist"))
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == here.split()


def test_legacy_hash_drops_fields_added_later_only_at_their_neutral_value():
    import dataclasses

    from ntk_vs_nn.config import Config, KernelConfig, ProtocolConfig

    # every later field at its neutral value (the newest generation's defaults are not: see the end)
    cfg = Config(protocol=ProtocolConfig(sum_grad="joint"), kernel=KernelConfig(optimizer="train"))
    from ntk_vs_nn.config.hashing import ADDED_LATER as _ADDED_LATER
    from ntk_vs_nn.config.hashing import TEACHER_HASH_SINCE as _TEACHER_HASH_SINCE

    new, *older = cfg.science_hashes()
    n = len(_ADDED_LATER)
    full = {cfg._hash(g) for g in range(n + 1)}
    assert new == cfg.science_hash() and new not in older and full <= set(cfg.science_hashes())
    # the teacher hash, then its forms from before the newest fields (a field added later must not
    # orphan the teachers of a run in progress); none from before the teacher hash existed
    teachers = [h for h in older if h not in full]
    assert teachers[0] == cfg.teacher_hash() and cfg._hash(n - 1, students=False) in teachers
    assert cfg._hash(n - 1, students=False) != cfg.teacher_hash()  # (protocol.sum_grad is in the newest only)
    assert cfg._hash(_TEACHER_HASH_SINCE - 1, students=False) not in teachers
    # a non-neutral value of a later field changes both forms (it changes the numbers)
    tfds = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="tfds"))
    assert set(tfds.science_hashes()).isdisjoint(cfg.science_hashes())
    # the kernel section only enters the hash when a kernel backend other than weights is chosen
    tiles = dataclasses.replace(cfg, kernel=dataclasses.replace(cfg.kernel, steps=5))
    assert tiles.science_hashes() == cfg.science_hashes()
    # the default's newest fields are not neutral (gradient-descent kernel rows, the member-scaled sum):
    # no older form drops them, so no store made before them holds its units
    default = Config()
    assert set(default.science_hashes()).isdisjoint(full)
    # ... except the kernel families' own weight-space budget, which changes their numbers
    for field, value in [("epochs", 90), ("weights_lr", 0.03), ("student_epochs", 120), ("gp_lr", 0.05)]:
        budget = dataclasses.replace(cfg, kernel=dataclasses.replace(cfg.kernel, **{field: value}))
        students_only = field == "student_epochs"  # the teachers' units keep their hash
        assert {budget._hash(g) for g in range(n + 1)}.isdisjoint(cfg.science_hashes()), field
        assert (budget.teacher_hash() == cfg.teacher_hash()) == students_only, field
    fn = dataclasses.replace(cfg, kernel=dataclasses.replace(cfg.kernel, backend="function"))
    assert fn.science_hash() != cfg.science_hash()
    fn90 = dataclasses.replace(fn, kernel=dataclasses.replace(fn.kernel, epochs=90))  # no weights in function space
    assert fn90.science_hashes() == fn.science_hashes()
    assert (
        dataclasses.replace(fn, kernel=dataclasses.replace(fn.kernel, tile_size=7)).science_hash() == fn.science_hash()
    )


def test_kernel_families_train_with_their_own_budget_and_students_with_theirs():
    from ntk_vs_nn.config import Config

    sets = ["kernel.epochs=90", "kernel.weights_lr=0.03", "kernel.student_epochs=120", "protocol.student_epochs=60"]
    cfg = apply_overrides(Config(), sets)
    assert cfg.train_for("nn") == cfg.train and cfg.train_for("nn", student=True).epochs == 60
    for fam in ("ntk", "ntk_prime", "gp"):
        t, s = cfg.train_for(fam), cfg.train_for(fam, student=True)
        assert (t.epochs, t.lr, s.epochs, s.lr) == (90, 0.03, 120, 0.03)
        tr = cfg.train  # gradient descent (the kernel default), with the nets' batches and schedule
        assert (t.optimizer, t.batch_size, t.schedule) == ("sgd", tr.batch_size, tr.schedule)
    plain = Config()
    # the step in units of 1 / lambda_max (the row divides by it): 1 unless kernel.weights_lr says otherwise
    sgd = dataclasses.replace(plain.train, optimizer="sgd", lr=1.0, momentum=plain.kernel.momentum, nesterov=False)
    assert plain.train_for("gp", student=True) == sgd and plain.train_for("nn") == plain.train
    absolute = apply_overrides(Config(), ["kernel.weights_lr_units=absolute"])
    assert absolute.train_for("gp").lr == absolute.train.lr and not absolute.kernel_lr_in_lambda_units
    older = apply_overrides(Config(), ["kernel.optimizer=train"])  # the older runs: the nets' optimiser
    assert older.train_for("gp", student=True) == older.train
    only = apply_overrides(Config(), ["kernel.epochs=90"])  # students: as the kernel teachers
    assert only.train_for("ntk", student=True).epochs == 90
    with pytest.raises(UserError):
        apply_overrides(Config(), ["kernel.weights_lr=-1"])
    gp = apply_overrides(cfg, ["kernel.gp_lr=0.2"])  # gp's own step; the ntk families keep weights_lr
    assert gp.train_for("gp").lr == gp.train_for("gp", student=True).lr == 0.2
    assert gp.train_for("ntk").lr == gp.train_for("ntk_prime").lr == 0.03 and gp.train_for("nn").lr == cfg.train.lr


def test_saved_config_of_an_older_version_loads_with_defaults():
    from ntk_vs_nn.config import Config
    from ntk_vs_nn.config.presets import from_dict

    d = Config().to_dict()
    d.pop("kernel")
    d["data"].pop("source")
    assert from_dict(d) == Config()


@pytest.mark.parametrize(
    "folder", ["quick-mnist1d", "quick-mnist1d/seed-block-2", "quick-mnist1d/kernel-function", "fmnist-fashion_mnist"]
)
def test_committed_results_still_belong_to_their_config(folder):
    """Adding a config field must not orphan recorded results: the hash each committed record
    carries is one of the hashes its saved config gives today (`_ADDED_LATER` generations)."""
    import json
    import os

    from ntk_vs_nn.config.presets import from_dict

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "results", folder)
    with open(os.path.join(root, "config.json")) as f:
        cfg = from_dict(json.load(f))
    with open(os.path.join(root, "records.jsonl")) as f:
        recorded = {json.loads(line)["config_hash"] for line in f}
    assert recorded and recorded <= {h for rep in cfg.replicate_configs for h in rep.science_hashes()}


def test_student_fields_leave_the_teacher_hash_alone_and_teacher_fields_change_it():
    """Configs that differ only in how students are distilled share their teachers' units (one store,
    the teachers trained once); anything the teachers read changes both hashes."""
    from ntk_vs_nn.config import Config
    from ntk_vs_nn.config.hashing import STUDENT_FIELDS

    cfg = Config()
    for sets in (["protocol.kd_inputs=mixup"], ["protocol.teacher=online"], ["protocol.kd_alpha=0.5"],
                 ["protocol.kd_students=3"], ["protocol.student_epochs=90"], ["kernel.student_epochs=5"],
                 ["protocol.kd_inputs=mixup", "protocol.kd_mixup=0.2"], ["protocol.sd_students=2"]):  # fmt: skip
        other = apply_overrides(cfg, sets)
        assert other.science_hash() != cfg.science_hash(), sets
        assert other.teacher_hash() == cfg.teacher_hash(), sets
    for sets in (["train.epochs=7"], ["train.mixup=0.2"], ["train.augment=shift_noise"], ["protocol.members=4"],
                 ["train.noise=0.3"], ["model.norm=none"]):  # fmt: skip
        other = apply_overrides(cfg, sets)
        assert other.teacher_hash() != cfg.teacher_hash(), sets
    from ntk_vs_nn.config.hashing import ADDED_LATER as _ADDED_LATER

    assert cfg.teacher_hash() not in {cfg._hash(g) for g in range(len(_ADDED_LATER) + 1)}
    assert set(STUDENT_FIELDS["protocol"]) <= {f.name for f in dataclasses.fields(cfg.protocol)}


def test_replication_presets_follow_the_recipe_and_fmnist_meets_the_premise_setting():
    from ntk_vs_nn.config.presets import PRESETS, get_preset
    from ntk_vs_nn.models import build_model

    for name in PRESETS:  # every preset builds, and its networks parse
        cfg = get_preset(name)
        for model in (*cfg.table.nn_models, *cfg.table.ntk_models):
            build_model(model, 10, 2, cfg.model.norm)
    gpu = get_preset("replication-cifar10")
    t, p = gpu.train, gpu.protocol
    assert (gpu.dataset, gpu.table.nn_models, gpu.data.n_train) == ("cifar10", ("ResNet-18",), 0)
    assert (t.optimizer, t.lr, t.epochs, t.schedule) == ("adam", 1e-3, 100, "constant")
    assert (p.members, p.ensemble_rule, p.kd_students, gpu.sd_students) == (5, "probs", 1, 5)
    assert gpu.table.train_sum is False and gpu.table.reference == "replication"
    cpu = get_preset("replication")
    assert cpu.dataset == "fashion_mnist" and cpu.protocol == gpu.protocol and cpu.table.reference == "replication"
    fm = get_preset("fmnist")
    assert fm.table.nn_models == ("PlainCNN-2-1",) and fm.model.norm == "none" and fm.data.n_train == 20000
    assert fm.protocol.kd_students == 3  # a KD verdict needs more than one student
    assert get_preset("fmnist-full").data.n_train == 0


def test_train_fields_added_later_leave_the_theory_experiments_hashes_alone_only_at_neutral():
    """The theory experiments hash their TrainConfig whole: the transformation fields added since
    (crop_pad, shift, noise, mixup) stay out of it at their neutral values and enter it otherwise."""
    from ntk_vs_nn.config import hash_dict
    from ntk_vs_nn.experiments.channels import ChannelsConfig

    cfg = ChannelsConfig()
    d = dataclasses.asdict(cfg)
    d.pop("preset"), d.pop("claim")
    d["run"] = {"seed": cfg.run.seed}  # as ChannelsConfig.science_hash
    for name in ("crop_pad", "shift", "noise", "mixup"):
        d["train"].pop(name)
    assert cfg.science_hash() == hash_dict(d)  # as before the fields existed
    mixed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixup=0.2))
    assert mixed.science_hash() != cfg.science_hash()


def test_a_saved_config_without_a_later_field_loads_with_its_older_behaviour():
    """config.json from before protocol.sum_grad and kernel.optimizer existed ran the train-sum with the
    plain gradient and the kernel rows with the nets' optimiser: loading it gives those values (not the
    new defaults), so its records keep their hash; a fresh default config is another science (hash)."""
    import dataclasses

    from ntk_vs_nn.config import Config, KernelConfig, ProtocolConfig
    from ntk_vs_nn.config.presets import from_dict

    old = Config(protocol=ProtocolConfig(sum_grad="joint"), kernel=KernelConfig(optimizer="train"))
    saved = dataclasses.asdict(old)
    del saved["protocol"]["sum_grad"], saved["kernel"]["optimizer"]
    loaded = from_dict(saved)
    assert loaded == old and loaded.kernel_optimizer == "adam" and loaded.sum_grad_scale() == 1.0
    assert loaded.science_hash() == old.science_hash() != Config().science_hash()
    assert Config().kernel_optimizer == "sgd" and Config().sum_grad_scale() == 10.0
    assert Config().train_for("ntk").optimizer == "sgd" and Config().train_for("nn").optimizer == "adam"


def test_control_singles_where_students_train_longer():
    from ntk_vs_nn.config import Config
    from ntk_vs_nn.config.presets import get_preset

    quick = get_preset("quick")  # nets: 30-epoch singles, 90-epoch students; kernels: one budget
    assert quick.control_members("nn") == max(quick.protocol.kd_students, quick.sd_students) == 5
    assert quick.control_members("ntk") == quick.control_members("gp") == 0
    assert Config().control_members("nn") == 0  # students as long as their singles
    on = apply_overrides(Config(), ["protocol.control=on"])
    assert on.control_members("nn") == 5 and apply_overrides(quick, ["protocol.control=off"]).control_members("nn") == 0
    # control adds units of its own and changes no other unit: every hash is the same whatever its setting
    assert on.teacher_hash() == Config().teacher_hash() and on.science_hash() == Config().science_hash()
    off = apply_overrides(quick, ["protocol.control=off"])
    assert off.science_hash() == quick.science_hash() and off.teacher_hash() == quick.teacher_hash()


def test_a_store_made_before_control_existed_resolves_under_control_auto():
    """The regression: the quick kernel table's store (made before protocol.control) lost its students'
    units because control=auto, where the nets' students train longer, entered the students' hash."""
    from ntk_vs_nn.config.hashing import ADDED_LATER as _ADDED_LATER
    from ntk_vs_nn.config.presets import get_preset

    quick = get_preset("quick")
    assert quick.protocol.control == "auto" and quick.control_members("nn") > 0
    before = len(_ADDED_LATER) - 1  # the generation before control and data_order were added
    old = apply_overrides(quick, ["protocol.control=off"])  # what such a store ran with
    assert old._hash(before) in quick.science_hashes()
    assert old._hash(before, students=False) in quick.teacher_hashes()


def test_distillation_settings_are_checked_by_one_rule_in_every_experiment():
    from ntk_vs_nn.config import ProtocolConfig
    from ntk_vs_nn.experiments.multiview import MultiViewConfig, ProtocolSection

    for bad in (dict(kd_alpha=1.5), dict(kd_alpha=-0.1), dict(kd_tau=-1.0)):
        with pytest.raises(UserError, match="protocol.kd_"):
            Config(protocol=ProtocolConfig(**bad))
        with pytest.raises(UserError, match="protocol.kd_"):
            MultiViewConfig(protocol=ProtocolSection(**bad))
    assert Config(protocol=ProtocolConfig(kd_tau=0.0)).protocol.kd_tau == 0.0  # the tables' "auto"
    with pytest.raises(UserError, match="protocol.kd_tau must be > 0"):
        MultiViewConfig(protocol=ProtocolSection(kd_tau=0.0))  # multiview has no auto
