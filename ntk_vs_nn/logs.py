"""The package's one logger. Nothing below the command line prints: a module with no ``log`` callback of
its caller's logs to `LOG`. Its warnings reach stderr even unconfigured (Python's last-resort handler); a
process the CLI does not run (a worker process, a Ray task) shows its info lines with `to_stderr`."""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("ntk_vs_nn")


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged (not when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def to_stderr():
    """Show `LOG`'s info lines on stderr, as they come; returns ``LOG.info``, a ``log`` callback."""
    if not any(isinstance(h, _Stderr) for h in LOG.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    return LOG.info
