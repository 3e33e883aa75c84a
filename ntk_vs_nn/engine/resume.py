"""Resume one unit's training part-way: its carry (params and optimiser state) after whole epochs.

A unit that trains for hours (the Fashion-MNIST ntk train-sum model: ten linearised nets, 60 epochs) must
survive a stopped run. `Trainer.fit` saves an `EpochSnapshot` of a member group's carry and its losses so
far every ``every_s`` seconds and after its last epoch, and starts from the saved epoch when one is there.
An epoch's data order and augmentation keys are functions of the epoch index alone, so the resumed run is
the uninterrupted one, bit for bit (tests/engine/test_resume.py). The file is one ``.npz`` (no pickle), written to
a temporary name and renamed; one that does not match the live carry (leaf count, shapes, dtypes, the
epoch budget) is ignored and training starts from epoch 0.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np


class EpochSnapshot:
    def __init__(self, path: str, every_s: float = 600.0):
        self.path, self.every_s = path, float(every_s)
        self._last = time.monotonic()

    def load(self, like, epochs: int):
        """``(epochs done, carry, (done, ...) losses)`` saved for a carry shaped as ``like``, or None."""
        leaves, treedef = jax.tree.flatten(like)
        try:
            with np.load(self.path, allow_pickle=False) as f:
                meta = f["meta"]
                if int(meta[1]) != epochs or int(meta[2]) != len(leaves):
                    return None
                got = [f[f"leaf_{i}"] for i in range(len(leaves))]
                losses = f["losses"]
                done = int(meta[0])
        except (OSError, KeyError, ValueError):  # absent or damaged: start afresh
            return None
        out = []
        for arr, live in zip(got, leaves):
            want = np.dtype(live.dtype)
            if arr.dtype != want:  # dtypes numpy cannot name (bfloat16) are saved as unsigned ints
                if arr.dtype.itemsize != want.itemsize:
                    return None
                arr = arr.view(want)
            if arr.shape != tuple(live.shape):
                return None
            out.append(jax.device_put(arr, live.sharding) if isinstance(live, jax.Array) else arr)
        if not 0 < done <= epochs or len(losses) != done:
            return None
        return done, jax.tree.unflatten(treedef, out), losses

    def save(self, done: int, epochs: int, carry, losses, force: bool = False) -> None:
        """Save after ``done`` epochs when ``every_s`` has passed since the last save (or ``force``)."""
        if not force and time.monotonic() - self._last < self.every_s:
            return
        leaves = [np.asarray(a) for a in jax.tree.leaves(carry)]
        plain = [a if a.dtype.isbuiltin == 1 else a.view(f"u{a.dtype.itemsize}") for a in leaves]
        arrays = {f"leaf_{i}": a for i, a in enumerate(plain)}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, meta=np.array([done, epochs, len(leaves)]), losses=np.asarray(losses), **arrays)
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def clear(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
