"""The five protocols, written once for every family: single, ensemble, train_sum, kd and sd of one
(family, model) row of a table (`Row`, `run_row`), and the members-and-ensemble protocol of the theory
experiments. One file per job:

row.py        `Row` and the five protocols (`run_row`: all of them for one row);
ledger.py     the unit ledger: unit ids, records, finished units loaded instead of retrained (resume),
              teacher units adopted from an older hash;
execution.py  training a row's units here or in the worker processes of `workers.Pool` (run.workers);
trainers.py   the row's trainers (teachers, the train-sum model, students, controls), their step in units
              of lambda_max, their inputs (augmentation, mixup, perturbation) and online teachers;
members.py    members and their ensemble, the theory experiments' protocol.
"""

from ntk_vs_nn.config import PROTOCOLS
from ntk_vs_nn.families import resolve_conv  # (imported from here before the package split)
from ntk_vs_nn.protocols.members import members_and_ensemble, module_trainer
from ntk_vs_nn.protocols.row import Row, resolve_members_mode, run_row
from ntk_vs_nn.protocols.trainers import check_students, memberwise

__all__ = [
    "PROTOCOLS",
    "Row",
    "check_students",
    "members_and_ensemble",
    "memberwise",
    "module_trainer",
    "resolve_conv",
    "resolve_members_mode",
    "run_row",
]
