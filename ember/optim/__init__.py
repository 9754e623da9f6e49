"""``ember.optim``: optimizers (SGD, Adam, AdamW, ... LBFGS), ``lr_scheduler`` and ``swa_utils``.

The same names and behaviour as ``torch.optim``: ``import ember as torch`` and
``torch.optim.Adam(model.parameters(), lr=1e-3)`` works unchanged, state dicts included.
"""
from ember.optim.optimizer import (  # noqa: F401
    Optimizer, register_optimizer_step_post_hook, register_optimizer_step_pre_hook)
from ember.optim.sgd import SGD, ASGD  # noqa: F401
from ember.optim.adam import Adam, AdamW  # noqa: F401
from ember.optim.adam_variants import Adamax, NAdam, RAdam  # noqa: F401
from ember.optim.adagrad import Adagrad, Adadelta  # noqa: F401
from ember.optim.rmsprop import RMSprop, Rprop  # noqa: F401
from ember.optim.lbfgs import LBFGS  # noqa: F401
from ember.optim.adafactor import Adafactor  # noqa: F401
from ember.optim.muon import Muon  # noqa: F401
from ember.optim.sparse_adam import SparseAdam  # noqa: F401
from ember.optim._stateless import swap_in_optimizer_params_and_state  # noqa: F401
from ember.optim import lr_scheduler  # noqa: F401,E402


def __getattr__(name: str):
    # swa_utils needs ember.nn (AveragedModel is a Module): load it on first use so that
    # ``import ember.optim`` does not pull in the whole nn package.
    if name == "swa_utils":
        import importlib
        mod = importlib.import_module("ember.optim.swa_utils")
        globals()["swa_utils"] = mod
        return mod
    raise AttributeError(f"module 'ember.optim' has no attribute '{name}'")


__all__ = ["Adafactor", "Adadelta", "Adagrad", "Adam", "Adamax", "AdamW", "ASGD", "LBFGS",
           "lr_scheduler", "Muon", "NAdam", "Optimizer", "RAdam", "RMSprop", "Rprop", "SGD",
           "SparseAdam", "swap_in_optimizer_params_and_state", "swa_utils"]
