"""bitsandbytes' module path ``bitsandbytes.optim.lars``: the LARS classes (defined in ``sgd``)."""

from bnb8.optim.sgd import LARS, LARS8bit, LARS32bit, PytorchLARS

__all__ = ["LARS", "LARS8bit", "LARS32bit", "PytorchLARS"]
