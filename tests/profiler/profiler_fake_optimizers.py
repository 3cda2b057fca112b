"""Optimizer classes that misbehave on purpose, importable by dotted name from worker processes."""

import os
import signal
import time

import torch


class CrashOnStep(torch.optim.SGD):
    """Kills its own process on the first step, as a crash in native code would."""

    def step(self, closure=None):
        os.kill(os.getpid(), signal.SIGKILL)


class ThresholdAdam(torch.optim.Adam):
    """Adam that accepts ``min_8bit_size`` (and keeps 32-bit state): for sweep plumbing tests only."""

    def __init__(self, params, lr=1e-3, min_8bit_size=4096):
        super().__init__(params, lr=lr)
        self.min_8bit_size = min_8bit_size


class SlowSGD(torch.optim.SGD):
    """SGD that sleeps 50 ms per step: leaves time to kill a run between rows."""

    def step(self, closure=None):
        time.sleep(0.05)
        return super().step(closure)


class HangOnStep(torch.optim.SGD):
    """Never returns from its first step, as a deadlocked kernel would."""

    def step(self, closure=None):
        time.sleep(3600)


class EnvProbe(torch.optim.SGD):
    """Fails its first step with a message that shows the worker's OMP_WAIT_POLICY."""

    def step(self, closure=None):
        raise RuntimeError(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


class RejectsOnStep(torch.optim.SGD):
    """Constructs fine, then rejects its first step as a bad setting found late would."""

    def step(self, closure=None):
        raise ValueError("Invalid learning rate at step time")


class DivergesOnStep(torch.optim.SGD):
    """Turns the parameters into NaN, as a learning rate far too large would: a `diverged` row."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.fill_(float("nan"))
