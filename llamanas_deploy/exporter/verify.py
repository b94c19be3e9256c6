"""Checks an exported artifact must pass before it is written as good.

Every check is run and every failure collected; then one `VerificationError` names them all
(what diverged, by how much, against which limit).

- `verify_fp32`: the ORT session's names and dynamic axes match the export config, and its
  logits and present KV match the float32 PyTorch model's (`torch_reference`, taken before the
  session opens) on a prefill (batch 2, empty past) and on a decode step that feeds the ORT
  cache back in: max abs diff <= a share of the largest |value|
  of torch's logits (of its KV for the cache): `FP32_RELATIVE_TOLERANCE` for a float32 graph,
  `FP16_RELATIVE_TOLERANCE` for a float16 one (the CUDA artifact, checked on the GPU when the
  session runs there). Rounding adds up over layers, and a fused kernel sums in another order
  than eager torch: on SmolLM2-135M (30 layers, logits up to ~34) the float32 graph differs by
  1.7e-3, 5e-5 of that; a wrong graph (a swapped layer, another rotary base, a broken cache)
  differs by a sizeable share of it.
- `verify_quantized`: perplexity change against the unquantized graph on held-out tokens, and
  greedy-generation agreement (share of generated tokens equal to its, position by position);
  the unquantized graph's figures (`quality_reference`) are taken once, before its session closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import VerificationError
from ..model.compat import cache_tensors, forward_with_cache, returned_cache
from ..onnx_model.config import DecoderOnnxConfig
from ..onnx_model.fp16 import FP16_RELATIVE_TOLERANCE
from ..runtime import generate, host, perplexity

FP32_RELATIVE_TOLERANCE = 3e-4
# the quality gate's default per precision (held-out perplexity change against the unquantized graph,
# %): measured on SmolLM2-135M, int8 +0.2 % and int4 +41 % (see `onnx_model.quantize`); the margins
# take its sub-networks (fewer layers quantize worse) and refuse what the old int8 (+100 %) gave.
DEFAULT_MAX_PPL_INCREASE_PCT = {"int8": 2.0, "int4": 60.0}
PREFILL_BATCH, PREFILL_LEN = 2, 12
GREEDY_PROMPTS, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS = 4, 16, 16


@dataclass
class Checks:
    """Collects failures; `raise_if_failed` raises them all at once."""

    what: str
    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, failure: str) -> bool:
        if not ok:
            self.failures.append(failure)
        return ok

    def within(self, name: str, value: float, limit: float) -> None:
        self.expect(math.isfinite(value) and value <= limit, f"{name} {value:.3g} > {limit:g}")

    def raise_if_failed(self) -> None:
        if self.failures:
            raise VerificationError(f"{self.what} failed verification: " + "; ".join(self.failures))


# ---- fp32 against PyTorch -----------------------------------------------------------------------
@dataclass(frozen=True)
class TorchStep:
    """The float32 torch model's logits and cache after one call."""

    logits: np.ndarray
    kv: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class TorchReference:
    """What the torch model computes on the check's inputs: taken before the ONNX session opens,
    so that the torch weights can be freed first."""

    ids: np.ndarray
    prefill: TorchStep
    decode: TorchStep


def torch_reference(model, config: DecoderOnnxConfig, tokens: Sequence[int]) -> TorchReference:
    """The float32 torch `model` on a prefill (batch 2, empty past) and one decode step after it."""
    ids = _prefill_ids(tokens, config.vocab_size)
    prompt, step = ids[:, :-1], ids[:, -1:]
    prefill = _torch_forward(model, prompt)
    prefill_step = _step(prefill)  # before the decode step grows the same cache
    return TorchReference(ids, prefill_step, _step(_torch_forward(model, step, returned_cache(prefill))))


def _step(output) -> TorchStep:
    return TorchStep(output.logits.float().numpy(), tuple(t.float().numpy() for t in cache_tensors(returned_cache(output))))


def verify_fp32(reference: TorchReference, decoder, config: DecoderOnnxConfig) -> dict[str, Any]:
    """Compare the ORT session `decoder` (a float32 or float16 graph) with the float32 torch model's
    `reference`; returns the figures, raises on failure."""
    fp16 = decoder.kv_dtype == np.float16
    checks = Checks(f"{'fp16' if fp16 else 'fp32'} ONNX export")
    _check_io(decoder, config, checks)
    checks.raise_if_failed()  # values cannot be compared when names are wrong
    prompt, step = reference.ids[:, :-1], reference.ids[:, -1:]
    logits, present = decoder.forward(prompt, decoder.empty_past(len(prompt)))
    prefill = _compare_step("prefill", decoder, config, logits, present, reference.prefill, 0, checks, fp16)
    logits, present = decoder.forward(step, present)  # ORT on its own cache (left on the device)
    decode = _compare_step("decode", decoder, config, logits, present, reference.decode, prompt.shape[1], checks, fp16)
    checks.raise_if_failed()
    tolerance = max(prefill["logits_tolerance"], decode["logits_tolerance"])
    return {"tolerance": tolerance, "relative_tolerance": _relative(fp16), "graph_dtype": "float16" if fp16 else "float32",
            "provider": decoder.session.get_providers()[0], "prefill": prefill, "decode": decode}  # fmt: skip


def _relative(fp16: bool) -> float:
    return FP16_RELATIVE_TOLERANCE if fp16 else FP32_RELATIVE_TOLERANCE


def relative_tolerance(reference: np.ndarray, relative: float) -> float:
    """The max abs difference allowed against `reference`: `relative` of its largest |value| (at least 1)."""
    return relative * max(1.0, float(np.abs(reference).max()))


def _check_io(decoder, config: DecoderOnnxConfig, checks: Checks) -> None:
    session = decoder.session
    for kind, got, spec in (("inputs", session.get_inputs(), config.inputs), ("outputs", session.get_outputs(), config.outputs)):
        names = [arg.name for arg in got]
        if not checks.expect(names == list(spec), f"{kind} are {names[:4]}..., expected {list(spec)[:4]}..."):
            continue
        for arg in got:
            for axis, axis_name in spec[arg.name].items():
                dim = arg.shape[axis]
                checks.expect(isinstance(dim, str), f"{arg.name} axis {axis} is fixed at {dim}, expected dynamic '{axis_name}'")


def _prefill_ids(tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    need = PREFILL_BATCH * (PREFILL_LEN + 1)
    if len(tokens) < need:
        tokens = np.random.default_rng(0).integers(0, vocab_size, need)
    return np.asarray(tokens[:need], dtype=np.int64).reshape(PREFILL_BATCH, PREFILL_LEN + 1)


def _torch_forward(model, ids: np.ndarray, cache=None):
    import torch

    with torch.no_grad():
        return forward_with_cache(model, cache, input_ids=torch.from_numpy(ids), use_cache=True)


def _compare(name: str, ort_out: np.ndarray, reference: np.ndarray, checks: Checks, expected_shape: tuple[int, ...]) -> float:
    if not checks.expect(tuple(ort_out.shape) == expected_shape, f"{name} has shape {tuple(ort_out.shape)}, expected {expected_shape}"):
        return float("inf")
    return float(np.abs(ort_out - reference).max())


def _compare_step(label: str, decoder, config, ort_logits, ort_present, ref: TorchStep, past_len: int, checks: Checks,
                  fp16: bool) -> dict[str, float]:  # fmt: skip
    """Limits relative to torch's values (`relative_tolerance`), at the graph dtype's share."""
    batch, seq = ort_logits.shape[:2]
    shapes = config.output_shapes(batch, seq, past_len)
    logits = _compare(f"{label} logits", ort_logits, ref.logits, checks, shapes["logits"])
    kv = max(
        _compare(f"{label} {present}", host(ort_present[past]), t, checks, shapes[present])
        for present, past, t in zip(config.present_names, decoder.past_names, ref.kv)
    )
    logits_limit = relative_tolerance(ref.logits, _relative(fp16))
    kv_limit = max(relative_tolerance(t, _relative(fp16)) for t in ref.kv)
    checks.within(f"{label} logits max abs diff", logits, logits_limit)
    checks.within(f"{label} present KV max abs diff", kv, kv_limit)
    return {"logits_max_abs_diff": logits, "kv_max_abs_diff": kv, "logits_tolerance": logits_limit,
            "kv_tolerance": kv_limit, "batch": batch, "tokens": seq, "past": past_len}  # fmt: skip


# ---- quantized against fp32 -------------------------------------------------------------------
@dataclass(frozen=True)
class QualityReference:
    """The unquantized graph's perplexity and greedy tokens on the held-out tokens: taken once, then
    its session can close before the quantized one opens."""

    perplexity: Any  # runtime.PerplexityResult
    greedy: tuple[tuple[int, ...], ...]
    seq_len: int


def quality_reference(unquantized, tokens: Sequence[int], seq_len: int) -> QualityReference:
    """Perplexity (windows of `seq_len`) and greedy generations of the `OrtDecoder` `unquantized`."""
    greedy = tuple(tuple(generate(unquantized, prompt, GREEDY_NEW_TOKENS).tokens) for prompt in _greedy_prompts(tokens))
    return QualityReference(perplexity(unquantized, tokens, seq_len), greedy, seq_len)


def verify_quantized(
    reference: QualityReference, quantized, tokens: Sequence[int], max_ppl_increase_pct: float | None,
    base_precision: str = "fp32",
) -> dict[str, Any]:  # fmt: skip
    """Perplexity change and greedy agreement of the `OrtDecoder` `quantized` against the unquantized
    graph's `reference`; `base_precision` names that one in the figures (fp16 for the CUDA graph)."""
    checks = Checks("quantized model")
    base, mine = reference.perplexity, perplexity(quantized, tokens, reference.seq_len)
    change = (mine.perplexity / base.perplexity - 1) * 100
    checks.expect(math.isfinite(mine.perplexity), f"perplexity is {mine.perplexity} ({base_precision}: {base.perplexity:.4g})")
    if max_ppl_increase_pct is not None:
        checks.within("perplexity increase %", change, max_ppl_increase_pct)
    agree, total = 0, 0
    for prompt, theirs in zip(_greedy_prompts(tokens), reference.greedy):
        mine_tokens = generate(quantized, prompt, GREEDY_NEW_TOKENS).tokens
        agree += sum(x == y for x, y in zip(theirs, mine_tokens))
        total += len(theirs)
    checks.raise_if_failed()
    return {
        "num_tokens": base.num_tokens,
        "seq_len": reference.seq_len,
        f"perplexity_{base_precision}": base.perplexity,
        "perplexity": mine.perplexity,
        "perplexity_change_pct": change,
        "max_perplexity_increase_pct": max_ppl_increase_pct,
        "greedy_agreement": agree / total,
        "greedy_prompts": GREEDY_PROMPTS,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
    }


def _greedy_prompts(tokens: Sequence[int]) -> list[list[int]]:
    """`GREEDY_PROMPTS` prompts spread over the held-out tokens."""
    stride = max(GREEDY_PROMPT_LEN, len(tokens) // GREEDY_PROMPTS)
    return [list(tokens[i : i + GREEDY_PROMPT_LEN]) for i in range(0, stride * GREEDY_PROMPTS, stride)][:GREEDY_PROMPTS]
