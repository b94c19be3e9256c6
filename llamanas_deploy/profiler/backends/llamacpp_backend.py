"""`llamacpp`: llama.cpp (llama-cpp-python) on the CPU, a GGUF file at f16 / q8_0 / q4_0, batch 1.

`load` writes the sub-network as `llamanas export --format gguf` does (`model.gguf_write`:
a `llama` file for uniform MLP widths, `deci` for per-layer ones) into a temporary directory, once
per (sub-network, precision): the file stays across the visits of a profile (`ExportCache`, as the
`onnxruntime` backend keeps its exports). The weights are the other backends' (`weights.subnet_model`:
the checkpoint's, or random from config.json), but the file needs the model's tokenizer: a GGUF file
carries its vocabulary, and `model.gguf_write` writes only the model's own (byte-level BPE `tokenizer.json`).

llama.cpp runs with `threads` threads for prompt and generation alike, a context just large enough
for the shapes (opened by the first workload of a sub-network), and logits for the last position
only, as a llama.cpp generation computes them. Workloads match the other backends: prefill = one
prompt from an empty cache; decode = one token against a cache of exactly `context_len` tokens (the
cache is cut back after every step, untimed); generate = prefill, then `gen_len - 1` greedy steps.
llama.cpp decodes one sequence here: `batch_size` must be 1 (`check_shapes`, refused with the settings).
Peak memory is llama.cpp's alone: the probe starts again once a file is written, so a sub-network's
first visit is measured as its others.

`LlamaCppRunner` holds the workloads; `LlamaCppBackend` writes the files it runs, `ArtifactBackend`
runs a GGUF artifact's own file instead (`llamanas bench`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...concepts import GGUF_PRECISIONS
from ...errors import BadInputError
from ...gguf_runtime import last_logits, load_llama
from ...model.gguf_write import GGUF_NAME, require_llama_cpp, tokenizer_metadata, write_model_gguf
from ...model.families import read_config_dict
from ...subnet_config import SubnetConfig
from ..base import ArtifactTiming, Backend, BackendUnavailable, MemoryProbe, Shapes, Workload
from ..weights import subnet_model, weights_source
from .onnxruntime_backend import ExportCache


class LlamaCppRunner(Backend):
    """llama.cpp's workloads on the GGUF file a subclass's `load` names (`_path`)."""

    name = "llamacpp"
    precisions = GGUF_PRECISIONS
    devices = ("cpu",)

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        try:
            require_llama_cpp()
        except BadInputError as err:
            raise BackendUnavailable(err.detail) from None

    @classmethod
    def check_shapes(cls, shapes: Shapes) -> None:
        if shapes.batch_size != 1:
            raise BadInputError(f"backend {cls.name} decodes one sequence: expected 1, got {shapes.batch_size}",
                                param="batch_size")  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._path: Path | None = None  # the loaded sub-network's GGUF file
        self._llm = None  # llama.cpp with that file, opened by the first workload

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
        self._llm = self._path = None

    # ---- workloads -------------------------------------------------------------------------
    def prefill(self, shapes: Shapes) -> Workload:
        llm = self._llama(shapes)
        prompt = self._tokens(shapes.prompt_len)
        return Workload(run=lambda: llm.eval(prompt), reset=llm.reset)

    def decode(self, shapes: Shapes) -> Workload:
        llm = self._llama(shapes)
        context = self._tokens(shapes.context_len)
        step = self._tokens(1)

        def hold_context() -> None:
            """Untimed: the cache holds exactly `context`. Cut back after a step (`eval` drops the cache
            beyond `n_tokens` before it runs); evaluated again after another workload used the cache."""
            if llm.n_tokens < len(context) or not np.array_equal(llm.input_ids[: len(context)], context):
                llm.reset()
                llm.eval(context)
            llm.n_tokens = len(context)

        return Workload(run=lambda: llm.eval(step), reset=hold_context)

    def generate(self, shapes: Shapes) -> Workload:
        llm = self._llama(shapes)
        prompt = self._tokens(shapes.prompt_len)

        def run() -> None:
            llm.eval(prompt)
            for _ in range(shapes.gen_len - 1):
                llm.eval([int(last_logits(llm).argmax())])

        return Workload(run=run, reset=llm.reset)

    def _llama(self, shapes: Shapes):
        """llama.cpp with the loaded file and a context for `shapes` (opened once per sub-network)."""
        if self._llm is None:
            context = max(shapes.prompt_len + shapes.gen_len, shapes.context_len + 1)
            self._llm = load_llama(self._path, self.threads, context)
        return self._llm

    def _tokens(self, length: int) -> list[int]:
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, self._llm.n_vocab(), length).tolist()


class LlamaCppBackend(LlamaCppRunner):
    """Writes each sub-network's GGUF file from the model's weights (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._source = weights_source(self.model, self.weights)
        self._model_dir = _checked_tokenizer(self.model)
        self._exports: ExportCache | None = None
        self._probe: MemoryProbe | None = None
        self.exports_made = 0  # how many GGUF files this backend wrote (a sub-network's visits share one)

    @property
    def weights_source(self) -> str:
        return self._source

    def memory_probe(self) -> MemoryProbe:
        # started again once `load` has written a file: building and quantizing the torch sub-network is
        # not llama.cpp's memory, and the later visits, which reuse the file, would not see it
        self._probe = super().memory_probe()
        return self._probe

    def load(self, subnet: SubnetConfig) -> int:
        """Write `subnet`'s GGUF file unless an earlier visit did; returns its size."""
        if self._exports is None:
            self._exports = ExportCache(prefix="llamanas-gguf-")
        key = f"{subnet.id}-{self.precision}"
        self._path = self._exports.get(key, GGUF_NAME)
        if self._path is None:
            here = self._exports.directory(key)
            shutil.rmtree(here, ignore_errors=True)  # what a failed write left
            here.mkdir()
            self._path = self._write(subnet, here / GGUF_NAME)
            self.exports_made += 1
            self._exports.add(key)
            if self._probe is not None:
                self._probe.start()
        return self._path.stat().st_size

    def _write(self, subnet: SubnetConfig, path: Path) -> Path:
        import torch

        net = subnet_model(self.model, subnet, torch.float32, self._source, self.seed)
        write_model_gguf(net, subnet, self._model_dir, path, self.precision)
        return path


class ArtifactBackend(ArtifactTiming, LlamaCppRunner):
    """Times a GGUF artifact instead of writing one."""

    def load(self, subnet: SubnetConfig) -> int:
        self.check_holds(subnet)
        self._path = self.artifact.gguf_path
        return self.artifact.manifest["size"]["gguf_bytes"]


def _checked_tokenizer(model: str | Path) -> Path:
    """The model directory, once its tokenizer is one `model.gguf_write` can put in a GGUF file."""
    config, config_path = read_config_dict(model)
    try:
        tokenizer_metadata(config_path.parent, config["vocab_size"])
    except BadInputError as err:
        raise BadInputError(f"backend llamacpp: {err.detail}", param="model") from None
    return config_path.parent
