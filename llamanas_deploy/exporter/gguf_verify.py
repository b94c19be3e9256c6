"""Checks a GGUF export must pass: the file run by llama.cpp (llama-cpp-python) against the torch sub-network.

Every check runs and every failure is collected (`verify.Checks`); then one `VerificationError`
names them all.

- tokenizer: llama.cpp tokenizes the held-out texts to the very ids of the model's
  `tokenizer.json` (the token list, the merges and the pre-tokenizer all take part).
- logits: non-overlapping windows of `EVAL_SEQ_LEN` held-out tokens, each from an empty context,
  the logits of every position; the first window's second half goes one token at a time through
  llama.cpp's KV cache. Against torch's float32 logits: the max abs diff relative to their largest
  |value|, and the mean abs diff relative to their mean |value|; gated for f16 (`GATES`), recorded
  for the others. The mean is the tight bound; the max catches a few positions gone wrong (a
  broken cache) but must leave room for the first positions of a window, where attention has
  one or two tokens to look at and the activations are at their largest.
- quality: held-out perplexity change against torch's (`DEFAULT_MAX_PPL_INCREASE_PCT`, as the ONNX
  int8/int4 gate) and next-token agreement: the share of positions where both pick the same most
  likely next token (teacher-forced, so one early difference does not spoil the rest).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..data import load_tokenizer
from ..errors import VerificationError
from ..gguf_runtime import load_llama
from ..runtime import summed_nll
from .pipeline import EVAL_SEQ_LEN
from .verify import Checks


@dataclass(frozen=True)
class Gate:
    """What a precision must reach besides the perplexity bound (None: recorded, not gated)."""

    max_relative_logits_diff: float | None  # max abs diff / max |torch logit|
    mean_relative_logits_diff: float | None  # mean abs diff / mean |torch logit|
    min_next_token_agreement: float


# measured on 4,064 held-out tokens, threads fixed: tiny (largest) / SmolLM2-135M (its largest, smallest
# 22 x 768 and a heterogeneous 26-layer sub-network, worst of the three):
# - f16: logits within 7.5e-4 / 1.6e-2 of the largest |logit| (SmolLM2's worst: position 1 of a
#   window), 1.2e-4 / 8.4e-4 of the mean |logit| on average (q8_0: 3.1e-3 / 2.5e-2); perplexity
#   +0.00 % / +0.02 %; next-token agreement 0.9995 / 0.997.
# - q8_0: perplexity -0.01 % / +1.0 %, agreement 0.99 / 0.925. q4_0 (output matrix at Q8_0): +0.03 % /
#   +63 % (the 22 x 768 sub-network; the largest +31 %), agreement 0.97 / 0.47. The ONNX int4 gate's
#   60 % would refuse that sub-network's q4_0, which is what llama.cpp users get; a broken file
#   (a wrong permutation, a wrong block layout) multiplies the perplexity and agrees on few tokens.
# - q4_k_m (llama.cpp's quantizer; SmolLM2's rows of 576 are not whole Q4_K blocks, so most of its
#   matrices are Q5_0): SmolLM2's largest / 22 x 768 +10.9 % / +9.4 %, agreement 0.84 / 0.70 (q4_0
#   on the same run: +31.1 % / +63.4 %, 0.69 / 0.47).
DEFAULT_MAX_PPL_INCREASE_PCT = {"f16": 0.5, "q8_0": 2.0, "q4_0": 100.0, "q4_k_m": 20.0}
GATES = {"f16": Gate(5e-2, 3e-3, 0.98), "q8_0": Gate(None, None, 0.85), "q4_0": Gate(None, None, 0.35),
         "q4_k_m": Gate(None, None, 0.6)}
TORCH_BATCH = 4  # windows per torch call
CONTEXT = 2 * EVAL_SEQ_LEN  # llama.cpp's context: one window, with room


def verify_gguf(model, path: Path, tokens: Sequence[int], texts: Sequence[str], model_dir: Path, *, precision: str,
                threads: int, max_ppl_increase_pct: float) -> dict[str, Any]:  # fmt: skip
    """llama.cpp (`threads` threads) running the GGUF file `path` of `precision` against the torch
    sub-network `model` on the held-out `tokens` (and `texts`, tokenized by `model_dir`'s tokenizer);
    returns the figures, raises `VerificationError` naming every failure."""
    checks = Checks(f"{precision} GGUF export")
    with open_llama(path, threads) as llama:
        tokenizer = _check_tokenizer(llama, texts, model_dir, len(tokens), checks)
        comparison = _compare(model, llama, _windows(tokens))
    gate = GATES[precision]
    logits = comparison.logits_figures(gate)
    quality = comparison.quality_figures(max_ppl_increase_pct, gate)
    _gate(checks, logits, quality)
    checks.raise_if_failed()
    return {"threads": threads, "tokenizer": tokenizer, "logits_vs_torch": logits, "quality_vs_torch": quality}


def _gate(checks: Checks, logits: dict[str, Any], quality: dict[str, Any]) -> None:
    for figure in ("relative_max_diff", "relative_mean_diff"):
        if logits[f"{figure}_limit"] is not None:
            checks.within(f"logits {figure}", logits[figure], logits[f"{figure}_limit"])
    checks.within("perplexity increase %", quality["perplexity_change_pct"], quality["max_perplexity_increase_pct"])
    agreement, minimum = quality["next_token_agreement"], quality["min_next_token_agreement"]
    checks.expect(agreement >= minimum, f"next-token agreement {agreement:.3g} < {minimum:g}")


def _windows(tokens: Sequence[int]) -> np.ndarray:
    rows = len(tokens) // EVAL_SEQ_LEN
    return np.asarray(tokens[: rows * EVAL_SEQ_LEN], dtype=np.int64).reshape(rows, EVAL_SEQ_LEN)


# ---- llama.cpp -----------------------------------------------------------------------------------


class LlamaCpp:
    """A GGUF file loaded by llama-cpp-python (`open_llama`): the logits of every position, its tokenizer."""

    def __init__(self, llm):
        self.llm = llm

    def logits(self, tokens: Sequence[int], prefill: int) -> np.ndarray:
        """Logits [len(tokens), vocab] from an empty context: the first `prefill` tokens in one batch,
        the others one at a time through the KV cache."""
        self.llm.reset()
        self.llm.eval(list(tokens[:prefill]))
        for token in tokens[prefill:]:
            self.llm.eval([int(token)])
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        """The ids llama.cpp's tokenizer gives `text`, no special token added or parsed."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


@contextmanager
def open_llama(path: Path, threads: int, context: int = CONTEXT) -> Iterator[LlamaCpp]:
    """`path` loaded by llama-cpp-python, `threads` threads for prompt and decode alike, logits kept
    for every position; `VerificationError` when llama.cpp refuses the file."""
    llm = load_llama(path, threads, context, logits_all=True, error=VerificationError)
    try:
        yield LlamaCpp(llm)
    finally:
        llm.close()


# ---- the checks ----------------------------------------------------------------------------------


def _check_tokenizer(llama: LlamaCpp, texts: Sequence[str], model_dir: Path, max_tokens: int, checks: Checks) -> dict[str, Any]:
    """The texts (up to `max_tokens` tokens) tokenized by both; the first text that differs is a failure."""
    tokenizer = load_tokenizer(model_dir)
    count = compared = 0
    for text in texts:
        if count >= max_tokens:
            break
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        theirs = llama.tokenize(text)
        if not checks.expect(theirs == ids, f"llama.cpp tokenizes text {compared} differently from tokenizer.json "
                                            f"from token {_first_difference(ids, theirs)}"):  # fmt: skip
            break
        count, compared = count + len(ids), compared + 1
    return {"texts": compared, "tokens": count}


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class _Comparison:
    """Running figures over the windows: llama.cpp's logits against torch's."""

    max_abs_diff: float = 0.0
    max_abs_logit: float = 0.0
    sum_abs_diff: float = 0.0
    sum_abs_logit: float = 0.0
    values: int = 0
    nll_torch: float = 0.0
    nll: float = 0.0
    agree: int = 0
    count: int = 0
    decode_steps: int = 0

    def add(self, reference: np.ndarray, logits: np.ndarray, row: np.ndarray) -> None:
        diff, size = np.abs(logits - reference), np.abs(reference)
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.max_abs_logit = max(self.max_abs_logit, float(size.max()))
        self.sum_abs_diff += float(diff.sum(dtype=np.float64))
        self.sum_abs_logit += float(size.sum(dtype=np.float64))
        self.values += diff.size
        targets = row[None, 1:]
        self.nll_torch += summed_nll(reference[None, :-1], targets)
        self.nll += summed_nll(logits[None, :-1], targets)
        self.agree += int((logits[:-1].argmax(-1) == reference[:-1].argmax(-1)).sum())
        self.count += targets.size

    def logits_figures(self, gate: Gate) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit_torch": self.max_abs_logit,
            "relative_max_diff": self.max_abs_diff / self.max_abs_logit,
            "relative_max_diff_limit": gate.max_relative_logits_diff,
            "mean_abs_diff": self.sum_abs_diff / self.values,
            "mean_abs_logit_torch": self.sum_abs_logit / self.values,
            "relative_mean_diff": self.sum_abs_diff / self.sum_abs_logit,
            "relative_mean_diff_limit": gate.mean_relative_logits_diff,
            "decode_steps": self.decode_steps,
        }

    def quality_figures(self, max_ppl_increase_pct: float, gate: Gate) -> dict[str, Any]:
        base, mine = math.exp(self.nll_torch / self.count), math.exp(self.nll / self.count)
        return {
            "num_tokens": self.count,
            "seq_len": EVAL_SEQ_LEN,
            "perplexity_torch": base,
            "perplexity": mine,
            "perplexity_change_pct": (mine / base - 1) * 100,
            "max_perplexity_increase_pct": max_ppl_increase_pct,
            "next_token_agreement": self.agree / self.count,
            "min_next_token_agreement": gate.min_next_token_agreement,
        }


def _compare(model, llama: LlamaCpp, windows: np.ndarray) -> _Comparison:
    """Every window through torch (float32, `TORCH_BATCH` at a time) and llama.cpp; the first window's
    second half through llama.cpp's KV cache one token at a time."""
    import torch

    comparison = _Comparison()
    for start in range(0, len(windows), TORCH_BATCH):
        batch = windows[start : start + TORCH_BATCH]
        with torch.no_grad():
            reference = model(input_ids=torch.from_numpy(batch), use_cache=False).logits.float().numpy()
        for index, row in enumerate(batch):
            prefill = len(row) // 2 if start + index == 0 else len(row)
            comparison.decode_steps += len(row) - prefill
            comparison.add(reference[index], llama.logits(row, prefill), row)
    return comparison
