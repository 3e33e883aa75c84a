"""Named PRNG streams.

Every random draw in the suite comes from one root key per run seed, split into named streams by
`fold_in` with a fixed tag, so adding a stream never shifts the existing ones (positional `split`
would). Member ``i`` of any protocol draws its init from ``member_key(root, "init", i)`` and its
data order from ``member_key(root, "data", i)``; the nn and ntk families therefore share the same
initialisation and the same batches for a given member (common random numbers).

Example:
    >>> root = root_key(0)
    >>> k = member_key(root, "init", 3)
"""

import jax

STREAMS = {
    "init": 1,  # member initialisations (single members 0..L-1; train-sum reuses them)
    "data": 2,  # per-member, per-epoch data order
    "split": 3,  # train/validation split
    "kd": 4,  # knowledge-distillation student init
    "sd": 5,  # self-distillation student inits
    "kd_data": 6,  # knowledge-distillation student data order
    "sd_data": 7,  # self-distillation students' data order
    "wide": 8,  # the wide control net's init and data order (`protocols.Row.wide`)
    # the theory experiments' streams (values kept from their first runs, so their draws never changed)
    "multiview.data": 0x5E6,  # features, train, test: member_key(root, "multiview.data", i)
    "gaussian.teacher": 0x7EA,  # Figure 3's teacher nets, one per architecture
    "gaussian.input": 0x1A,  # the inputs, one per input kind
    "gaussian.noise": 0x2B,  # the label noise, one per teacher
    "gaussian.mixture": 0x3C,
    "gaussian.probe": 0x4D,
    "gaussian.student": 0x5E,
    "channels.pretrain": 0xB0,  # Figure 6's backbone
    "channels.split": 0xB1,  # the channel splits, one per count
    "channels.init": 0xB2,
    "channels.data": 0xB3,
}
# tags folded into a training step's keys (not the root): fold_in(fold_in(data_key, epoch), "augment"), then
# the step index; mixup and the distillation input's perturbation fold into that step's key
STEP_TAGS = {"augment": 0xA06, "mixup": 0x313, "perturb": 0x0D5}


def root_key(seed: int) -> jax.Array:
    """The typed root key of a run seed."""
    return jax.random.key(seed)


def stream(root: jax.Array, name: str) -> jax.Array:
    """The key of a named stream; unknown names are a programming error."""
    return jax.random.fold_in(root, STREAMS[name])


def member_key(root: jax.Array, name: str, index: int) -> jax.Array:
    """The key of member ``index`` in stream ``name``."""
    return jax.random.fold_in(stream(root, name), index)
