"""Memory measurements: exact optimizer-state bytes, process RSS (CPU), CUDA allocator and NVML (GPU).

- ``optimizer_state_bytes``: every tensor reachable from ``optimizer.state`` (nested dicts, lists,
  tuples and objects with tensor attributes, e.g. a quantized-state object), each *storage* counted
  once: a ``qmap`` shared by all parameters costs its bytes once, a view into a larger buffer costs
  the whole buffer once.
- CPU: ``VmHWM`` (peak resident set) from ``/proc/self/status``. The peak is process-wide, so the
  runner trains every configuration in its own fresh worker process and resets the peak
  (``/proc/self/clear_refs``, Linux >= 4.0) just before the first step; the report gives the peak
  and the rise above the RSS at the start of training.
- CUDA: ``torch.cuda.max_memory_allocated`` (tensors) and NVML's per-process device memory
  (everything the process holds: allocator cache, CUDA context, kernels' workspace).
"""

from __future__ import annotations

import os

import torch


def _storages(obj, seen: dict[int, int], visited: set[int]) -> None:
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        seen[storage.data_ptr() or id(storage)] = storage.nbytes()
    elif id(obj) in visited:
        return
    elif isinstance(obj, dict):
        visited.add(id(obj))
        for value in obj.values():
            _storages(value, seen, visited)
    elif isinstance(obj, (list, tuple, set)):
        visited.add(id(obj))
        for value in obj:
            _storages(value, seen, visited)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        visited.add(id(obj))
        for value in vars(obj).values():
            _storages(value, seen, visited)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every distinct storage held in ``optimizer.state``."""
    seen: dict[int, int] = {}
    _storages(dict(optimizer.state), seen, set())
    return sum(seen.values())


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ CPU


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def rss_peak_bytes() -> int | None:
    """Peak resident set size of this process (``VmHWM``), or None where /proc is unavailable."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ CUDA


class NvmlProcessMemory:
    """Device memory NVML attributes to this process, sampled by :meth:`sample`; peak kept."""

    def __init__(self, device_index: int):
        self.peak: int | None = None
        self.error: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = self._handle_for(pynvml, device_index)
        except Exception as e:  # no driver, no pynvml, restricted container
            self._nvml = None
            self.error = f"NVML unavailable: {e}"

    @staticmethod
    def _handle_for(pynvml, device_index: int):
        """NVML's handle for torch's device: by UUID, since CUDA_VISIBLE_DEVICES renumbers devices."""
        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
        if uuid is not None:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except Exception:
                pass
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)

    def sample(self) -> None:
        if self._nvml is None:
            return
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception as e:
            self.error, self._nvml = f"NVML query failed: {e}", None
            return
        mine = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory is not None]
        if mine:
            self.peak = max(self.peak or 0, sum(mine))
        elif self.error is None:
            self.error = "NVML lists no memory for this process (containerised PID namespace?)"

    def device_info(self) -> dict:
        if self._nvml is None:
            return {}
        try:
            driver = self._nvml.nvmlSystemGetDriverVersion()
            total = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total
            return {"nvml_driver": driver, "nvml_total_bytes": int(total)}
        except Exception:
            return {}
