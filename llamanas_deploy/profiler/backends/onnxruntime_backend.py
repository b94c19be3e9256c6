"""`onnxruntime`: the deployed format, fp32 / int8 / int4, timed through ONNX Runtime sessions.

`load` exports the sub-network as `llamanas export` deploys it on this device (the same graph,
`onnx_model.graphs.export_graph`, and the same quantization, `quantize.settings_for`) into a
temporary directory and opens one session with a fixed number of intra-op threads. Each
sub-network is exported once: its file stays on disk across the visits of a profile (which
take turns), and is exported again only if it had to make room (`ExportCache`: the oldest
files go first when free disk space would fall below `DISK_RESERVE_BYTES`). Workloads match the `torch`
backend: prefill = one prompt from an empty cache (the graph computes logits for every
prompt position, as an Optimum export does); decode = one token against a cache of exactly
`context_len` tokens (ORT never mutates its inputs, so the same cache is fed every time);
generate = prefill, then `gen_len - 1` greedy decode steps.

`ArtifactBackend` times an existing artifact directory the same way (`llamanas bench`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...concepts import EXPORT_PRECISIONS
from ...errors import BadInputError
from ...onnx_model.config import ONNX_NAME, onnx_config_for
from ...onnx_model.graphs import check_precision, export_graph, export_quantized, graph_dtype, graph_for
from ...onnx_model.quantize import settings_for
from ...runtime import OrtDecoder
from ...subnet_config import SubnetConfig
from ..base import ArtifactTiming, Backend, BackendUnavailable, Shapes, Workload
from ..weights import subnet_model, weights_source

DISK_RESERVE_BYTES = 2 * 1024**3  # free space an export cache leaves on its disk


class ExportCache:
    """Exported sub-networks in one temporary directory, kept until the disk needs room.

    `path(key)` is where a key's file lives; `add(key)` records a new export and evicts the
    oldest others while free space is below the reserve.
    """

    def __init__(self, reserve_bytes: int = DISK_RESERVE_BYTES, prefix: str = "llamanas-ort-"):
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)  # removed when the backend is dropped
        self.root = Path(self._tmp.name)
        self.reserve_bytes = reserve_bytes
        self._order: list[str] = []

    def directory(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str, name: str) -> Path | None:
        path = self.directory(key) / name
        return path if path.is_file() else None

    def add(self, key: str) -> None:
        self._order = [k for k in self._order if k != key] + [key]
        while len(self._order) > 1 and shutil.disk_usage(self.root).free < self.reserve_bytes:
            shutil.rmtree(self.directory(self._order.pop(0)), ignore_errors=True)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = EXPORT_PRECISIONS
    devices = ("cpu", "cuda")

    @classmethod
    def check_supported(cls, device: str, precision: str) -> None:
        """What `llamanas export` deploys on `device` (e.g. int8 on the CPU, fp16 / int4 on CUDA)."""
        super().check_supported(device, precision)
        check_precision(device, precision)

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        from ...runtime import check_device  # looked up when called: tests patch it

        try:
            check_device(device)
        except BadInputError as err:
            raise BackendUnavailable(err.detail, param=err.param or "device") from None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._decoder = None
        self._exports: ExportCache | None = None
        self.exports_made = 0  # how many exports this backend ran (a sub-network's visits share one)

    @property
    def weights_source(self) -> str:
        return weights_source(self.model, self.weights)

    # ---- one sub-network -------------------------------------------------------------------
    def load(self, subnet: SubnetConfig) -> int:
        """Export `subnet` unless an earlier visit did, then open a session."""

        if self._exports is None:
            self._exports = ExportCache()
        key = f"{subnet.id}-{self.precision}"
        path = self._exports.get(key, ONNX_NAME)
        if path is None:
            here = self._exports.directory(key)
            shutil.rmtree(here, ignore_errors=True)
            here.mkdir()
            path = self._export(subnet, here)
            self.exports_made += 1
            self._exports.add(key)
        self._decoder = OrtDecoder(path, self.device, self.threads)
        return sum(p.stat().st_size for p in path.parent.glob("model.onnx*"))

    def _export(self, subnet: SubnetConfig, here: Path) -> Path:
        """The deployed graph of `subnet` at this precision, in `here/model.onnx` (unquantized scratch beside it)."""
        import torch


        net = subnet_model(self.model, subnet, torch.float32, self.weights_source, self.seed)
        config = onnx_config_for(net.config.to_dict(), f"sub-network {subnet.id}")
        graph, dtype = graph_for(self.device, config), graph_dtype(self.device)  # the graph `export` deploys
        settings = settings_for(self.precision, self.device)
        if settings is None:
            return export_graph(net, config, here, graph, self.precision, dtype)
        export_quantized(net, config, here, graph, settings, dtype)
        return here / ONNX_NAME

    def unload(self) -> None:
        self._decoder = None

    # ---- workloads -------------------------------------------------------------------------
    def prefill(self, shapes: Shapes) -> Workload:
        ids = self._tokens(shapes.batch_size, shapes.prompt_len)
        return Workload(run=lambda: self._decoder.forward(ids, self._decoder.empty_past(shapes.batch_size)))

    def decode(self, shapes: Shapes) -> Workload:
        batch = shapes.batch_size
        _, cache = self._decoder.forward(self._tokens(batch, shapes.context_len), self._decoder.empty_past(batch))
        step = self._tokens(batch, 1)
        return Workload(run=lambda: self._decoder.forward(step, cache))

    def generate(self, shapes: Shapes) -> Workload:
        prompt = self._tokens(shapes.batch_size, shapes.prompt_len)

        def run() -> None:
            logits, past = self._decoder.forward(prompt, self._decoder.empty_past(shapes.batch_size))
            for _ in range(shapes.gen_len - 1):
                token = logits[:, -1:].argmax(axis=-1)
                logits, past = self._decoder.forward(token, past)

        return Workload(run=run)

    def _tokens(self, batch: int, length: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, self._decoder.vocab_size, (batch, length), dtype=np.int64)


class ArtifactBackend(ArtifactTiming, OnnxRuntimeBackend):
    """Times an exported ONNX artifact instead of exporting."""

    def load(self, subnet: SubnetConfig) -> int:
        self.check_holds(subnet)
        self._decoder = self.artifact.decoder(threads=self.threads)
        return self.artifact.manifest["size"]["onnx_bytes"]

    def unload(self) -> None:
        self._decoder = None
