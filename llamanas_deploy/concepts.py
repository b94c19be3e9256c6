"""The toolkit's vocabulary, defined once: metrics and their units, devices, precisions, clocks,
tokenizer files. Every stage and every CLI choice list reads them from here.

Registries with behaviour live with that behaviour and are the one home of their names:
profiler backends in `profile/backends/__init__.py:BACKENDS`, search algorithms in
`search/algorithms.py:ALGORITHMS`, model families in `model/families.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import BadInputError


@dataclass(frozen=True)
class Metric:
    """A hardware figure a profile records and a predictor learns."""

    name: str  # what `fit --metric`, predictors and artifacts call it
    field: str  # the profile record's field and the search objective's name, unit included
    unit: str
    higher_is_better: bool  # a rate: the predictor learns its inverse as a cost

    @property
    def direction(self) -> str:
        return "max" if self.higher_is_better else "min"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("decode_ms", "decode_ms", "ms", False),
        Metric("prefill_ms", "prefill_ms", "ms", False),
        Metric("throughput", "throughput_tok_s", "tok/s", True),
        Metric("peak_mem", "peak_mem_mib", "MiB", False),
    )
}
TIMED_FIGURES = ("prefill_ms", "decode_ms", "throughput_tok_s")  # record fields with a spread of their own


def metric(name: str) -> Metric:
    """The metric called `name` (its short name or its record field); `BadInputError` otherwise."""
    for m in METRICS.values():
        if name in (m.name, m.field):
            return m
    raise BadInputError(f"metric {name!r} is not one of {sorted(METRICS)}")


DEVICES = ("cpu", "cuda")
CLOCKS = ("wall", "cpu")  # elapsed time, or the measuring thread's CPU time (one thread, shared machine)
TORCH_PRECISIONS = ("fp32", "bf16")
EXPORT_PRECISIONS = ("fp32", "int8", "int4", "fp16")  # per device: onnx_model.graphs.DEPLOYED_PRECISIONS
EXPORT_FORMATS = ("onnx", "gguf")  # an ONNX Runtime artifact (`exporter.pipeline`), a llama.cpp one (`exporter.gguf`)
GGUF_ARCHITECTURES = ("llama", "deci")  # llama.cpp's graph for uniform MLP widths; for per-layer widths
GGUF_PRECISIONS = ("f16", "q8_0", "q4_0", "q4_k_m")  # what `exporter.gguf` writes (q4_k_m: llama.cpp quantizes)
PROFILE_PRECISIONS = tuple(dict.fromkeys(TORCH_PRECISIONS + EXPORT_PRECISIONS + GGUF_PRECISIONS))
WEIGHT_SOURCES = ("auto", "random", "checkpoint")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# what travels with a super-network's weights when a stage writes a new one (prepared, fine-tuned)
SUPERNET_FILES = (*TOKENIZER_FILES, "chat_template.jinja", "heldout.txt", "mc_task.jsonl", "importance.json")


def check_choice(value: Any, choices: Sequence[Any], param: str) -> Any:
    """`value` if it is one of `choices`, else `BadInputError` naming the parameter `param`."""
    if value not in choices:
        raise BadInputError(f"{value!r}: expected one of {list(choices)}", param=param)
    return value


def max_threads() -> int:
    """The most threads a command accepts: this machine's logical cores (more only oversubscribes,
    and absurd counts crash OpenBLAS or hang ONNX Runtime)."""
    import os

    return os.cpu_count() or 1


def check_threads(threads: Any, param: str = "threads") -> Any:
    """`threads` if it is None or an integer from 1 to `max_threads()`; `BadInputError` naming `param` otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= max_threads():
        raise BadInputError(
            f"must be an integer from 1 to {max_threads()} (this machine's logical cores), got {threads!r}", param=param
        )
    return threads
