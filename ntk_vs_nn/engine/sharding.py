"""Ensemble members over a device mesh: ``run.members=shard``.

The stacked members of the ``vmap`` mode (a leading member axis on every param, optimiser state,
teacher and key) are placed with ``NamedSharding(mesh, P("member"))`` on a one-axis mesh of all
devices, the data (inputs, labels) replicated; XLA's SPMD partitioner then runs each device's
members locally, with no communication in the step (the members are independent). The stacked
train-sum model (``families.summed(..., stacked=True)``) is sharded the same way on its own member
axis; its logits' sum over members is then one all-reduce per step.

The member count is padded up to a multiple of the device count with copies of the last member
(their results are dropped), so L = 10 on 4 devices runs 12 members, 3 per device.

One host, several devices: any accelerator host, or a CPU host with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before jax starts (tests do this in a
subprocess). Several hosts: call ``jax.distributed.initialize()`` on every host before anything
else touches jax; `jax.devices()` then lists every host's devices and the same mesh spans them:

    # on each of 2 hosts (process_id 0 and 1), same command, same data on every host:
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> \\
        ntk-vs-nn table nn --preset quick --set run.members=shard --out results/x

(``maybe_initialize_distributed`` reads those variables; every process trains its own members and
process 0 writes the records.)
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "member"


def member_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``member`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def padded_count(m: int, mesh: Mesh) -> int:
    """``m`` rounded up to a multiple of the mesh size (members per device equal on all devices)."""
    d = mesh.size
    return -(-m // d) * d


def spec(axis: int = 0, name: str = AXIS) -> P:
    """The partition spec that shards array axis ``axis`` over the mesh axis ``name``."""
    return P(*([None] * axis), name)


def place(a, sharding: NamedSharding):
    """``a`` as a global array with ``sharding``. With several processes (multi-host), every process
    passes the same value and contributes the shards of its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(a, sharding)
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # typed keys: place their raw data
        return jax.random.wrap_key_data(place(jax.random.key_data(a), sharding), impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard(tree, mesh: Mesh, axis: int = 0):
    """Place every leaf of ``tree`` with its axis ``axis`` split over the mesh's (only) axis.

    Leaves with fewer dimensions, or whose size on ``axis`` is not a multiple of the mesh size
    (e.g. Adam's step count), are replicated."""

    def put(a):
        a = jax.numpy.asarray(a)
        ok = a.ndim > axis and a.shape[axis] % mesh.size == 0
        return place(a, NamedSharding(mesh, spec(axis, mesh.axis_names[0]) if ok else P()))

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied to every device of the mesh."""
    return jax.tree.map(lambda a: place(a, NamedSharding(mesh, P())), tree)


def gather(tree):
    """Host (numpy) copies of every leaf; in a multi-host run, of the whole global array."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def pad_members(seq: list, m: int) -> list:
    """``seq`` extended to ``m`` entries with copies of its last entry."""
    return list(seq) + [seq[-1]] * (m - len(seq))


def stacked_sum_size(family, params) -> int:
    """n if ``family`` is a stacked n-member sum (``summed(..., stacked=True)``: name ``*_sum<n>``
    and a leading axis of n on every param), else 0."""
    name = getattr(family, "name", "")
    if "_sum" not in name:
        return 0
    try:
        n = int(name.rsplit("_sum", 1)[1])
    except ValueError:
        return 0
    leaves = jax.tree.leaves(params)
    if not leaves or any(getattr(a, "ndim", 0) < 1 or a.shape[0] != n for a in leaves):
        return 0
    return n


DATA_AXIS = "data"


def data_mesh(batch_size: int) -> Mesh | None:
    """A one-axis mesh ``data`` over the CPU devices of this process when there are several and
    they divide ``batch_size`` (each device then takes an equal slice of every batch; params and
    optimiser state are replicated and the gradient is summed across them by XLA), else None."""
    if jax.process_count() > 1 or jax.default_backend() != "cpu":
        return None
    devices = jax.local_devices()
    if len(devices) <= 1 or batch_size % len(devices):
        return None
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def maybe_initialize_distributed() -> bool:
    """``jax.distributed.initialize`` from ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when the first is set (multi-host runs); must run
    before any other jax call. CPU collectives go through gloo. Returns whether it initialised."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    num = os.environ.get("JAX_NUM_PROCESSES")
    pid = os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(num) if num else None,
        process_id=int(pid) if pid else None,
    )
    return True
