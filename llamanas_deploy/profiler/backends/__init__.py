"""Registry of profiler backends: name -> "module:Class", imported only when used.

Adding a backend is one file in this folder (a `base.Backend` subclass, see its docstring)
and one line here.
"""

from __future__ import annotations

import importlib

from ...errors import BadInputError
from ..base import Backend

BACKENDS = {
    "torch": "llamanas_deploy.profiler.backends.torch_backend:TorchBackend",
    "torch-eager": "llamanas_deploy.profiler.backends.torch_backend:TorchEagerBackend",
    "torch-compile": "llamanas_deploy.profiler.backends.torch_compile_backend:TorchCompileBackend",
    "ipex": "llamanas_deploy.profiler.backends.ipex_backend:IpexBackend",
    "onnxruntime": "llamanas_deploy.profiler.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "llamacpp": "llamanas_deploy.profiler.backends.llamacpp_backend:LlamaCppBackend",
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`; `BadInputError` for an unknown name."""
    if name not in BACKENDS:
        raise BadInputError(f"unknown backend {name!r} (known: {', '.join(sorted(BACKENDS))})", param="backend")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)
