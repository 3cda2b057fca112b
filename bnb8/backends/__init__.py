"""Per-device implementations of the ops in ``bnb8._ops``: ``reference`` (pure torch, any device,
the test oracle), ``cpu`` (the C++ kernels) and ``cuda`` (the CUDA kernels, when built)."""
