"""lm-eval adapter (optional extra): a sub-network, run inside the super-network, as an lm-eval model.

`evaluate_lm_eval(model, space, subnet, tasks, limit)` scores one sub-network on lm-eval's tasks
(ARC, MMLU, TruthfulQA, WinoGrande, ...) with `lm_eval.simple_evaluate`. The sub-network is the
super-network under `SuperNetwork.activate` (weight views, no copy) and text goes through the model
directory's `tokenizer.json`. lm-eval downloads its task datasets, so unlike the rest of the toolkit
this needs network; install it with `pip install 'llamanas-deploy[lm-eval]'`.

Scoring follows lm-eval's Hugging Face model: a continuation's ids are those of `context +
continuation` past the context's ids; an empty context is the prefix token (BOS, else EOS); inputs
longer than the model's positions are cut from the left; rolling log-likelihood uses lm-eval's
disjoint windows; generation is greedy.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from .data import load_tokenizer
from .errors import BadInputError
from .evaluate import inference, score_continuations
from .model.compat import forward_with_cache, returned_cache
from .progress import Callback, report
from .subnet_config import SubnetConfig

NOT_INSTALLED = "lm-eval is not installed: pip install 'llamanas-deploy[lm-eval]' (it downloads its datasets, so it needs network)"


def evaluate_lm_eval(model, space, subnet: SubnetConfig, tasks: Sequence, limit: int | None = None,
                     batch_size: int = 16, *, callback: Callback = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per-task metrics of `subnet` on lm-eval `tasks` (`{task: {"acc,none": ..., ...}}`).

    `model` is a super-network directory / built-in name or a loaded `SuperNetwork`; `tasks` are lm-eval
    task names (or task config dicts, which `lm_eval.simple_evaluate` also takes).
    """
    lm_eval = require_lm_eval()
    if not tasks:
        raise BadInputError("no lm-eval tasks given (expected names such as arc_easy,winogrande)", param="tasks")
    from .model.supernet import load_supernet

    names = ", ".join(t if isinstance(t, str) else str(t.get("task", t)) for t in tasks)
    report(callback, "evaluate", message=f"evaluating sub-network {subnet.id} ({subnet.num_layers} layers) on lm-eval tasks {names}")
    supernet = load_supernet(model, space)
    subnet = space.validate(subnet, "subnet")
    lm = subnet_lm(supernet, subnet, load_tokenizer(supernet.source), batch_size=batch_size)
    results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit)
    return {task: {k: _plain(v) for k, v in metrics.items()} for task, metrics in results["results"].items()}


def subnet_lm(supernet, subnet: SubnetConfig, tokenizer, batch_size: int = 16, max_length: int | None = None):
    """An `lm_eval.api.model.LM` scoring requests with `subnet` inside `supernet` (a `tokenizers.Tokenizer`)."""
    return _adapter_class()(supernet, subnet, tokenizer, batch_size, max_length)


def require_lm_eval():
    """The `lm_eval` module; `BadInputError` when the optional extra is not installed."""
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401 - the base class the adapter derives from
    except ImportError:
        raise BadInputError(NOT_INSTALLED) from None
    return lm_eval


@functools.cache
def _adapter_class():
    return type("SubnetLM", (_SubnetScoring, require_lm_eval().api.model.LM), {})


def _plain(value):
    """JSON-ready metric values (lm-eval mixes numpy scalars and strings such as 'N/A')."""
    return value.item() if hasattr(value, "item") else value


class _SubnetScoring:
    """The methods of the adapter; combined with lm-eval's `LM` base class by `_adapter_class`."""

    def __init__(self, supernet, subnet: SubnetConfig, tokenizer, batch_size: int = 16, max_length: int | None = None):
        super().__init__()
        self.supernet, self.subnet, self.tokenizer = supernet, subnet, tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or int(supernet.config.get("max_position_embeddings", 2048))
        self.eot_token_id = supernet.config.get("eos_token_id")
        bos = supernet.config.get("bos_token_id")
        self.prefix_token_id = bos if bos is not None else self.eot_token_id

    # ---- lm-eval's three request types ----

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        return self._score(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owners = [], []
        for n, req in enumerate(requests):
            ids = self._encode(req.args[0])
            windows = get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, context_len=1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, self._score(pairs)):
            totals[n] += logprob
        return totals

    def generate_until(self, requests) -> list[str]:
        with inference(self.supernet, self.subnet) as model:
            return [self._greedy(model, *req.args) for req in requests]

    # ---- internals ----

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.prefix_token_id], self._encode(continuation)
        # as lm-eval does: trailing spaces of the context belong to the continuation
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._encode(context)
        return ctx, self._encode(context + continuation)[len(ctx) :]

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-probability, is greedy) of each continuation."""
        for _, cont in pairs:
            if not cont or len(cont) > self.max_length:
                raise BadInputError(f"lm-eval request: continuation of {len(cont)} tokens (expected 1..{self.max_length})")
        sequences = [(list(ctx) + list(cont), len(cont)) for ctx, cont in pairs]
        return score_continuations(self.supernet, self.subnet, sequences, self.batch_size, self.max_length)

    def _greedy(self, model, context: str, gen_kwargs: dict | None) -> str:
        import torch

        kwargs = dict(gen_kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", 256))
        ids = (self._encode(context) or [self.prefix_token_id])[-max(1, self.max_length - max_new) :]
        new: list[int] = []
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        for _ in range(min(max_new, self.max_length - len(ids))):
            token = int(out.logits[0, -1].argmax())
            if token == self.eot_token_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
            out = forward_with_cache(
                model, returned_cache(out), input_ids=torch.tensor([[token]]), use_cache=True, logits_to_keep=1
            )
        text = self.tokenizer.decode(new)
        for stop in until:
            text = text.split(stop)[0]
        return text
