"""`torch-compile`: the torch backend's model through `torch.compile` (Inductor).

Upstream PyTorch carries the CPU work of Intel's extension in Inductor. Compilation
happens in the warm-up calls of each workload, never inside a timed one; dynamo's caches
are reset when a sub-network is unloaded, so every sub-network is compiled afresh rather
than hitting the recompile limit and silently falling back to eager.
"""

from __future__ import annotations

from .torch_backend import TorchBackend


class TorchCompileBackend(TorchBackend):
    name = "torch-compile"
    cuda_graphs = False  # Inductor's own kernels, launched step by step (as before CUDA graphs came)

    def prepare(self, net):
        import torch

        # default dynamic=None: sequence and cache lengths become symbolic after the first change,
        # so a generation's growing cache costs one more compile rather than one per length
        return torch.compile(net)

    def unload(self) -> None:
        import torch

        super().unload()
        torch._dynamo.reset()
