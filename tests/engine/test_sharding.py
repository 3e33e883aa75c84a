"""run.members=shard: members (and the stacked train-sum model) split over a device mesh give the
same numbers as one device.

The device count must be fixed before jax starts, so the multi-device checks run in a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=4 (4 CPU "devices" on this host).
Tolerance: predictions agree to 1e-5 absolute (logits of order 1; measured ~5e-7, float32
reassociation in the partitioned program), per-epoch losses to 1e-5 relative."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ntk_vs_nn.engine import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ATOL = 1e-5

SCRIPT = r"""
import dataclasses, json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import make_tiny_config, make_tiny_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family, summed

assert jax.device_count() == 4, jax.devices()
data, cfg = make_tiny_dataset(), make_tiny_config()
tc = dataclasses.replace(cfg.train, epochs=2, batch_size=16)
out = {}


def spy(trainer):
    # record how the stacked carry reaches the compiled step: how many devices hold each leaf
    seen = []
    real = trainer._compiled

    def compiled(m, mode):
        fn = real(m, mode)

        def wrapped(carries, *rest):
            leaf = max(jax.tree.leaves(carries), key=lambda a: a.size)
            seen.append([len(leaf.sharding.device_set), str(leaf.sharding.spec), leaf.shape[0]])
            return fn(carries, *rest)

        return wrapped

    trainer._compiled = compiled
    return seen


for fam_name in ("nn", "ntk"):
    fam = make_family(fam_name, "SimpleCNN-3-1", data.num_classes, data.spatial_ndim, cfg)
    for m in (4, 3):  # 3 members: padded to 4, the copy dropped
        ik = [jax.random.key(100 + i) for i in range(m)]
        dk = [jax.random.key(200 + i) for i in range(m)]
        one = Trainer(fam, tc, len(data.x_train))
        ref = one.fit(ik, dk, data.x_train, data.y_train, mode="sequential")
        sh = Trainer(fam, tc, len(data.x_train))
        seen = spy(sh)
        got = sh.fit(ik, dk, data.x_train, data.y_train, mode="shard")
        pr = [one.predict(v, data.x_test) for v in ref.variables]
        pg = [sh.predict(v, data.x_test) for v in got.variables]
        out[f"{fam_name}/{m}"] = {
            "n_members": len(got.variables),
            "pred_diff": max(float(np.abs(a - b).max()) for a, b in zip(pr, pg)),
            "loss_rel": float(np.max(np.abs(ref.losses - got.losses) / np.abs(ref.losses))),
            "members_differ": float(np.abs(pg[0] - pg[1]).max()),
            "placement": seen[0],
        }

# the train-sum model of 4 members: stacked and sharded on its member axis vs the unrolled list
fam = make_family("nn", "SimpleCNN-3-1", data.num_classes, data.spatial_ndim, cfg)
ref_t = Trainer(summed(fam, 4), tc, len(data.x_train))
ref = ref_t.fit([jax.random.key(7)], [jax.random.key(8)], data.x_train, data.y_train, mode="sequential")
sh_t = Trainer(summed(fam, 4, stacked=True), tc, len(data.x_train))
seen = spy(sh_t)
got = sh_t.fit([jax.random.key(7)], [jax.random.key(8)], data.x_train, data.y_train, mode="shard")
a = ref_t.predict(ref.variables[0], data.x_test)
b = sh_t.predict(got.variables[0], data.x_test)
out["train_sum"] = {
    "pred_diff": float(np.abs(a - b).max()),
    "loss_rel": float(np.max(np.abs(ref.losses - got.losses) / np.abs(ref.losses))),
    "placement": seen[0],
}
print("RESULT " + json.dumps(out))
"""


def _run_script(script: str, devices: int, *args: str) -> dict:
    """The JSON after "RESULT " printed by ``script`` run on ``devices`` forced CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])


@pytest.fixture(scope="module")
def four_devices():
    return _run_script(SCRIPT, 4)


@pytest.mark.parametrize("case", ["nn/4", "ntk/4", "nn/3", "ntk/3"])
def test_sharded_members_equal_single_device_members(four_devices, case):
    r = four_devices[case]
    m = int(case.split("/")[1])
    assert r["n_members"] == m
    assert r["pred_diff"] < ATOL, r
    assert r["loss_rel"] < 1e-5, r
    assert r["members_differ"] > 1e-3  # distinct members, so the equality is not vacuous
    devices, spec, stacked = r["placement"]
    assert devices == 4 and "member" in spec  # really split over the 4 devices
    assert stacked == 4  # 3 members padded to one per device


def test_sharded_train_sum_equals_the_unrolled_sum(four_devices):
    r = four_devices["train_sum"]
    assert r["pred_diff"] < ATOL and r["loss_rel"] < 1e-5, r
    devices, spec, _ = r["placement"]
    assert devices == 4 and spec == str(sharding.spec(1))  # the sum's own member axis is split


MULTI_PROCESS = r"""
import os, sys
sys.path.insert(0, "tests")
from ntk_vs_nn.engine import sharding
assert sharding.maybe_initialize_distributed()
import dataclasses, jax, numpy as np
from conftest import make_tiny_config, make_tiny_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
data, cfg = make_tiny_dataset(), make_tiny_config()
tc = dataclasses.replace(cfg.train, epochs=2, batch_size=16)
fam = make_family("nn", "SimpleCNN-3-1", data.num_classes, data.spatial_ndim, cfg)
ik = [jax.random.key(100 + i) for i in range(4)]
dk = [jax.random.key(200 + i) for i in range(4)]
t = Trainer(fam, tc, len(data.x_train))  # the mesh of all 4 devices, 2 per process
got = t.fit(ik, dk, data.x_train, data.y_train, mode="shard")
local = sharding.member_mesh(jax.local_devices()[:1])  # the same program on one device of this process
ref = Trainer(fam, tc, len(data.x_train), mesh=local).fit(ik, dk, data.x_train, data.y_train, mode="shard")
diff = max(float(np.abs(t.predict(a, data.x_test) - t.predict(b, data.x_test)).max())
           for a, b in zip(got.variables, ref.variables))
print(f"RESULT {jax.process_index()} {diff}", flush=True)
"""


def _two_processes(tmp_path, name: str, argv: list[str], timeout: int) -> list[str]:
    """Run ``python *argv`` as 2 processes x 2 CPU devices joined by jax.distributed (gloo); both
    must exit 0. Returns each process's output."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
        }
        log = open(tmp_path / f"{name}{pid}.log", "w+")
        cmd = [sys.executable, *argv]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, _ in procs:
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    texts = []
    for proc, log in procs:
        log.seek(0)
        texts.append(log.read())
        assert proc.returncode == 0, texts[-1][-3000:]
    return texts


def test_two_processes_share_one_mesh_and_match_one_device(tmp_path):
    """Multi-host in miniature: 2 processes x 2 CPU devices joined by jax.distributed (gloo)."""
    for pid, text in enumerate(_two_processes(tmp_path, "p", ["-c", MULTI_PROCESS], timeout=300)):
        line = next(line for line in text.splitlines() if line.startswith("RESULT "))
        _, index, diff = line.split()
        assert int(index) == pid and float(diff) < ATOL, line


# -- helpers, in this process (one device) -------------------------------------------------------------
def test_padded_count_and_pad_members():
    mesh = sharding.member_mesh()
    d = mesh.size
    assert sharding.padded_count(1, mesh) == d
    assert sharding.padded_count(d, mesh) == d
    assert sharding.padded_count(d + 1, mesh) == 2 * d
    assert sharding.pad_members([1, 2, 3], 5) == [1, 2, 3, 3, 3]


def test_shard_replicates_what_cannot_be_split():
    mesh = sharding.member_mesh()
    tree = {"w": np.ones((mesh.size * 2, 3), np.float32), "count": np.zeros((), np.int32)}
    placed = sharding.shard(tree, mesh)
    assert placed["w"].sharding.spec == sharding.spec(0)
    assert placed["count"].sharding.spec == jax.sharding.PartitionSpec()
    np.testing.assert_array_equal(sharding.gather(placed)["w"], tree["w"])


def test_stacked_sum_size_recognises_only_stacked_sums(tiny_cfg):
    from ntk_vs_nn.families import make_family, summed

    fam = make_family("nn", "SimpleCNN-3-1", 3, 1, tiny_cfg)
    x = np.zeros((1, 12, 1), np.float32)
    stacked = summed(fam, 3, stacked=True)
    assert sharding.stacked_sum_size(stacked, stacked.init(jax.random.key(0), x)["params"]) == 3
    listed = summed(fam, 3)
    assert sharding.stacked_sum_size(listed, listed.init(jax.random.key(0), x)["params"]) == 0
    assert sharding.stacked_sum_size(fam, fam.init(jax.random.key(0), x)["params"]) == 0


def test_distributed_is_not_initialised_without_a_coordinator(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert sharding.maybe_initialize_distributed() is False


SMOKE_TABLE = [
    "table",
    "nn",
    "--preset",
    "smoke",
    "--set",
    "data.n_train=160",
    "--set",
    "data.n_test=100",
    "--set",
    "train.epochs=1",
    "--set",
    "table.nn_models=SimpleCNN-2-1",
]


def test_multi_host_cli_table_equals_one_process_and_only_process_0_writes(tmp_path):
    """`ntk-vs-nn table --set run.members=shard` on 2 processes x 2 CPU devices (jax.distributed via
    JAX_COORDINATOR_ADDRESS): one records file written by process 0 alone (no duplicate unit), and the
    table equals a one-process run's."""
    import pandas as pd

    multi, single = tmp_path / "multi", tmp_path / "single"
    argv = ["-m", "ntk_vs_nn", *SMOKE_TABLE, "--set", "run.members=shard", "--out", str(multi)]
    _two_processes(tmp_path, "cli", argv, timeout=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    done = subprocess.run(
        [sys.executable, "-m", "ntk_vs_nn", *SMOKE_TABLE, "--set", "run.members=sequential", "--out", str(single)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(multi / "records.jsonl") as f:
        units = [json.loads(line)["unit"] for line in f]
    assert units and len(units) == len(set(units))
    a = pd.read_csv(multi / "table_nn.csv").drop(columns=["wall_s"])
    b = pd.read_csv(single / "table_nn.csv").drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=0.2)  # accuracies in %; text columns exact


def test_store_does_not_write_on_processes_other_than_0(tmp_path, monkeypatch):
    from ntk_vs_nn.store import Store

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    store = Store(str(tmp_path))
    store.append({"unit": "u"})
    store.save_predictions("u", {"test": np.zeros(3)})
    assert not store.writer and os.listdir(tmp_path) == []
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    store = Store(str(tmp_path))
    store.append({"unit": "u"})
    assert store.writer and store.records() == [{"unit": "u"}]


DATA_PARALLEL = r"""
import dataclasses, json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import make_tiny_config, make_tiny_dataset
from ntk_vs_nn.engine import sharding
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family

data, cfg = make_tiny_dataset(), make_tiny_config()
tc = dataclasses.replace(cfg.train, epochs=2, batch_size=16)
out = {"devices": jax.device_count(), "mesh": sharding.data_mesh(16) is not None}
for fam_name in ("nn", "ntk"):
    fam = make_family(fam_name, sys.argv[1], data.num_classes, data.spatial_ndim, cfg)
    t = Trainer(fam, tc, len(data.x_train))
    seen = []
    real = t._compiled
    def compiled(m, mode, real=real, seen=seen):
        fn = real(m, mode)
        def wrapped(carries, states, idx, *rest):
            seen.append([len(jax.tree.leaves(carries)[0].sharding.device_set), str(getattr(idx.sharding, "spec", "-"))])
            return fn(carries, states, idx, *rest)
        return wrapped
    t._compiled = compiled
    got = t.fit([jax.random.key(1), jax.random.key(2)], [jax.random.key(3), jax.random.key(4)],
                data.x_train, data.y_train, mode="sequential")
    leaf = jax.tree.leaves(got.variables[0]["params"])[0]
    out[fam_name] = {
        "pred": [np.asarray(t.predict(v, data.x_test)).tolist() for v in got.variables],
        "losses": got.losses.tolist(),
        "placement": seen[0],
        "params_devices": len(leaf.sharding.device_set),
    }
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("model", ["SimpleCNN-3-1", "ResNet-10-1"])
def test_data_parallel_members_over_cpu_devices_equal_one_device(model):
    """Sequential members on a host split into 2 CPU devices: each batch is split over them (params
    replicated, the batch axis sharded), the trained params come back on one device, and predictions
    and losses equal a one-device process's (float32 reassociation only). (Per-example Jacobians,
    i.e. a vmapped conv weight-gradient, came out wrong when split this way on XLA:CPU, jax 0.10.2:
    the kernels stay on one device.)"""
    one, two = _run_script(DATA_PARALLEL, 1, model), _run_script(DATA_PARALLEL, 2, model)
    assert (one["devices"], one["mesh"], two["devices"], two["mesh"]) == (1, False, 2, True)
    for fam in ("nn", "ntk"):
        assert one[fam]["placement"] == [1, "-"]
        assert two[fam]["placement"] == [2, "P(None, None, 'data')"]
        assert two[fam]["params_devices"] == 1
        a, b = np.asarray(one[fam]["pred"]), np.asarray(two[fam]["pred"])
        assert np.abs(a - b).max() < ATOL * 10 and np.abs(a[0] - a[1]).max() > 1e-2  # members differ
        np.testing.assert_allclose(two[fam]["losses"], one[fam]["losses"], rtol=1e-5)


SPLIT_SUM = r"""
import dataclasses, json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import make_tiny_config, make_tiny_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family, summed

data, cfg = make_tiny_dataset(), make_tiny_config()
tc = dataclasses.replace(cfg.train, epochs=2, batch_size=16)
fam = summed(make_family("nn", "SimpleCNN-3-1", data.num_classes, data.spatial_ndim, cfg), 3)
t = Trainer(fam, tc, len(data.x_train), sum_step="split")
fwd, batch, *rest = t._split_fns()
seen = []
def watched(*a):
    out = batch(*a)
    seen.append(len(out[0].sharding.device_set))
    return out
t._step_cache["split"] = (fwd, watched, *rest)
got = t.fit([jax.random.key(1)], [jax.random.key(3)], data.x_train, data.y_train, mode="sequential")
leaf = jax.tree.leaves(got.variables[0]["params"])[0]
print("RESULT " + json.dumps({
    "pred": np.asarray(t.predict(got.variables[0], data.x_test)).tolist(), "losses": got.losses.tolist(),
    "batch_devices": seen[0], "params_devices": len(leaf.sharding.device_set),
}))
"""


def test_split_train_sum_over_cpu_devices_equals_one_device():
    """run.sum_step=split on a host split into 2 CPU devices: each batch is split over them like the
    joint program's (it ignored run.cpu_devices before), the params come back on one device, and the
    numbers equal a one-device process's (float32 reassociation only)."""
    one, two = _run_script(SPLIT_SUM, 1), _run_script(SPLIT_SUM, 2)
    assert (one["batch_devices"], two["batch_devices"], two["params_devices"]) == (1, 2, 1)
    assert np.abs(np.asarray(one["pred"]) - np.asarray(two["pred"])).max() < ATOL * 10
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)


def test_host_devices_are_configured_only_before_jax_starts(monkeypatch):
    from ntk_vs_nn.engine import host as cli

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert cli.host_device_count(0) == max(1, min(os.cpu_count() or 1, 8)) and cli.host_device_count(3) == 3
    assert cli.configure_host_devices(2) is False and "XLA_FLAGS" not in os.environ  # jax is imported here
    monkeypatch.delitem(sys.modules, "jax")  # as in a fresh `ntk-vs-nn table` process
    assert cli.configure_host_devices(2) is True
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert cli.configure_host_devices(4) is False  # an explicit count is left alone


def test_ynnpack_fusion_is_off_for_image_data_only_before_jax_starts_and_unless_the_user_chose(monkeypatch):
    """`host.configure_xla_cpu` (results/benchmarks/ynn_fusion.json): image datasets get the option, MNIST-1D
    and npz files keep jax's default; nothing once jax runs; a user's own YNNPACK setting wins; a run's
    records name the flags its processes ran with."""
    from ntk_vs_nn.engine import host
    from ntk_vs_nn.store import provenance

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert host.configure_xla_cpu("fashion_mnist") is False and "XLA_FLAGS" not in os.environ  # jax imported
    assert "xla_flags" not in provenance()
    monkeypatch.delitem(sys.modules, "jax")
    for spec in ("mnist1d", "npz:x.npz"):
        assert host.configure_xla_cpu(spec) is False and "XLA_FLAGS" not in os.environ
    assert host.configure_xla_cpu("synthetic:cifar10") is True
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=default --foo")
    assert host.configure_xla_cpu("fashion_mnist") is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=default --foo"
    monkeypatch.undo()
    import jax  # noqa: F401  (back in sys.modules for provenance)

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert provenance()["xla_flags"] == "--xla_cpu_experimental_ynn_fusion_type="
