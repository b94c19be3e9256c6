"""`onnxruntime`: the deployed format, fp32 / int8 / int4, timed through ONNX Runtime sessions.

`load` exports the sub-network with the project's exporter (`onnx_model/exporter.py`, KV cache,
the same quantization as `llamanas export`) into a temporary directory, once per sub-network,
and opens one session with a fixed number of intra-op threads. Workloads match the `torch`
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

from ...errors import BadInputError
from ...subnet_config import SubnetConfig
from ..base import Backend, BackendUnavailable, Shapes, Workload


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8", "int4")
    devices = ("cpu", "cuda")

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        from ...runtime import check_device

        try:
            check_device(device)
        except BadInputError as err:
            raise BackendUnavailable(err.detail, param=err.param or "device") from None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._decoder = None
        self._workdir: tempfile.TemporaryDirectory | None = None  # removed when the backend is dropped

    @property
    def weights_source(self) -> str:
        from ..weights import weights_source

        return weights_source(self.model, self.weights)

    # ---- one sub-network -------------------------------------------------------------------
    def load(self, subnet: SubnetConfig) -> int:
        """Export `subnet` once (warm-up and measurement reuse it), then open a session."""
        from ...onnx_model.exporter import ONNX_NAME
        from ...runtime import OrtDecoder

        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="llamanas-ort-")
        root = Path(self._workdir.name)
        here = root / subnet.id
        for other in root.iterdir():  # one sub-network on disk at a time
            if other != here:
                shutil.rmtree(other)
        path = here / self.precision / ONNX_NAME
        if not path.is_file():
            shutil.rmtree(here, ignore_errors=True)
            here.mkdir()
            path = self._export(subnet, here)
        self._decoder = OrtDecoder(path, self.device, self.threads)
        return sum(p.stat().st_size for p in path.parent.glob("model.onnx*"))

    def _export(self, subnet: SubnetConfig, tmp: Path) -> Path:
        import torch

        from ...onnx_model.config import onnx_config_for
        from ...onnx_model.exporter import ONNX_NAME, export_onnx
        from ...onnx_model.quantize import int4_settings, int8_settings, quantize
        from ..fingerprint import current_fingerprint
        from ..weights import subnet_model

        net = subnet_model(self.model, subnet, torch.float32, self.weights_source, self.seed)
        config = onnx_config_for(net.config.to_dict(), f"sub-network {subnet.id}")
        (tmp / "fp32").mkdir()
        fp32 = export_onnx(net, config, tmp / "fp32")
        if self.precision == "fp32":
            return fp32
        if self.precision == "int8":
            settings = int8_settings(current_fingerprint()["device"]["isa_flags"])
        else:
            settings = int4_settings(self.device)
        quantized = tmp / self.precision / ONNX_NAME
        quantized.parent.mkdir()
        quantize(fp32, quantized, settings, external_data=(fp32.parent / f"{ONNX_NAME}.data").exists())
        return quantized

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


class ArtifactBackend(OnnxRuntimeBackend):
    """Times an exported artifact (its own ONNX file, precision and device) instead of exporting."""

    def __init__(self, artifact, threads: int, **kwargs: Any):
        manifest = artifact.manifest
        super().__init__(artifact.directory, manifest["precision"], manifest["device"], threads, **kwargs)
        self.artifact = artifact

    @property
    def weights_source(self) -> str:
        return "checkpoint"

    def load(self, subnet: SubnetConfig) -> int:
        if subnet.id != self.artifact.manifest["subnet_id"]:
            raise BadInputError(f"{self.artifact.directory}: holds sub-network {self.artifact.manifest['subnet_id']}, not {subnet.id}")
        self._decoder = self.artifact.decoder(threads=self.threads)
        return self.artifact.manifest["size"]["onnx_bytes"]

    def unload(self) -> None:
        self._decoder = None
