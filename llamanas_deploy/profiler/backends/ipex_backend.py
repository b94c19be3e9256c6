"""`ipex`: the torch backend's model through Intel Extension for PyTorch's `ipex.optimize`.

The extension is end-of-life (its last release, 2.8, imports only with torch 2.8); where it
does not import, choosing this backend is refused in one line (exit 2).
"""

from __future__ import annotations

from ..base import BackendUnavailable
from .torch_backend import TorchBackend


class IpexBackend(TorchBackend):
    name = "ipex"
    devices = ("cpu",)

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        import torch

        try:
            import intel_extension_for_pytorch  # noqa: F401
        except Exception as err:  # the extension raises various errors on a torch version mismatch
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendUnavailable(
                f"ipex: Intel Extension for PyTorch does not import with torch {torch.__version__} "
                f"({reason}); it is end-of-life, use the torch-compile backend",
                param="backend",
            ) from None

    def prepare(self, net):
        import intel_extension_for_pytorch as ipex

        return ipex.optimize(net, dtype=self._dtype, inplace=True)
