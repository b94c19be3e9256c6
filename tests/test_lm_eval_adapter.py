"""The lm-eval adapter: hand-built requests on the shipped `tiny` super-network, no network.

Every score is checked against a direct computation on the sub-network extracted as a standalone
model (`SuperNetwork.extract`), an independent path from the adapter's weight views.
"""

from __future__ import annotations

import sys

import pytest

from llamanas_deploy.cli import main

TEXT = "A dictionary display is a possibly empty series of key/value pairs enclosed in curly braces."


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("lm_eval")
    from llamanas_deploy.data import load_tokenizer
    from llamanas_deploy.model.supernet import SuperNetwork
    from llamanas_deploy.space import load_space

    supernet = SuperNetwork.load("tiny")
    subnet = load_space("tiny").sample_random(1, seed=3)[0]
    return supernet, subnet, load_tokenizer("tiny"), supernet.extract(subnet)


def _instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, n) for n, a in enumerate(args)]


def _lm(setup, **kwargs):
    from llamanas_deploy.lm_eval_adapter import subnet_lm

    supernet, subnet, tokenizer, _ = setup
    return subnet_lm(supernet, subnet, tokenizer, **kwargs)


def _direct(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    import torch

    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = model(input_ids=ids, use_cache=False).logits[0, :-1].double().log_softmax(-1)
    picked = logprobs[len(ctx) - 1 :]
    targets = torch.tensor(cont)
    return picked[torch.arange(len(cont)), targets].sum().item(), bool((picked.argmax(-1) == targets).all())


def _greedy_tokens(model, ids: list[int], n: int) -> list[int]:
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out]), use_cache=False).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_loglikelihood_matches_direct_computation_and_greedy_flag(setup):
    _, _, tokenizer, extracted = setup
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    context = "The dictionary"
    greedy_text = tokenizer.decode(_greedy_tokens(extracted, enc(context), 1))
    pairs = [(context, greedy_text), (context, " zebra quantum"), ("A dictionary display is", " a possibly empty"),
             ("x = {", "'a': 1}"), (TEXT, " The end.")]
    results = _lm(setup, batch_size=2).loglikelihood(_instances("loglikelihood", pairs))
    expected = []
    for ctx, cont in pairs:
        # as lm-eval's HF model: the continuation is `context + continuation` past the context's ids
        # ("x = {" + "'a': 1}" merges across the boundary: " {'" is one token)
        whole, ctx_ids = enc(ctx + cont), enc(ctx)
        expected.append(_direct(extracted, ctx_ids, whole[len(ctx_ids) :]))
    for (got, got_greedy), (want, want_greedy) in zip(results, expected):
        assert got == pytest.approx(want, abs=1e-4)
        assert got_greedy == want_greedy
    assert results[0][1] is True  # the greedy next token is greedy
    assert results[1][1] is False


def test_empty_context_uses_the_prefix_token(setup):
    supernet, _, tokenizer, extracted = setup
    cont = tokenizer.encode("Hello world", add_special_tokens=False).ids
    (got, _), = _lm(setup).loglikelihood(_instances("loglikelihood", [("", "Hello world")]))
    assert got == pytest.approx(_direct(extracted, [supernet.config["bos_token_id"]], cont)[0], abs=1e-4)


def test_long_inputs_are_cut_from_the_left(setup):
    _, _, tokenizer, extracted = setup
    ids = tokenizer.encode(TEXT * 3, add_special_tokens=False).ids
    cont = tokenizer.encode(" The end.", add_special_tokens=False).ids
    (got, _), = _lm(setup, max_length=20).loglikelihood(_instances("loglikelihood", [(TEXT * 3, " The end.")]))
    kept = (ids + cont)[-21:]
    assert got == pytest.approx(_direct(extracted, kept[: -len(cont)], cont)[0], abs=1e-4)


def test_rolling_loglikelihood_is_minus_the_perplexity_nll(setup):
    from llamanas_deploy.evaluate import perplexity

    supernet, subnet, tokenizer, _ = setup
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    (got,) = _lm(setup).loglikelihood_rolling(_instances("loglikelihood_rolling", [(TEXT,)]))
    ref = perplexity(supernet, subnet, [supernet.config["bos_token_id"]] + ids, seq_len=len(ids) + 1)
    assert ref.num_tokens == len(ids)
    assert got == pytest.approx(-ref.details["loss"] * ref.num_tokens, abs=1e-4)


def test_rolling_windows_predict_every_token_once(setup):
    supernet, _, tokenizer, extracted = setup
    ids = tokenizer.encode(TEXT * 2, add_special_tokens=False).ids
    width = 16
    (got,) = _lm(setup, max_length=width).loglikelihood_rolling(_instances("loglikelihood_rolling", [(TEXT * 2,)]))
    stream = [supernet.config["bos_token_id"]] + ids
    want = 0.0
    # each window: up to `width` inputs, predicting the tokens not predicted before
    for start in range(0, len(ids), width):
        end = min(start + width, len(ids))
        window = stream[max(0, end - width) : end + 1]  # inputs stream[end-width:end] plus the last target
        want += _direct(extracted, window[: len(window) - (end - start)], window[len(window) - (end - start) :])[0]
    assert len(ids) > 2 * width
    assert got == pytest.approx(want, abs=1e-4)


def test_generate_until_is_greedy_and_stops(setup):
    _, _, tokenizer, extracted = setup
    context = "A dictionary display is"
    tokens = _greedy_tokens(extracted, tokenizer.encode(context, add_special_tokens=False).ids, 8)
    full = tokenizer.decode(tokens)
    stop = full.split()[1]  # a word that appears in the greedy continuation
    requests = _instances("generate_until", [(context, {"until": [], "max_gen_toks": 8}),
                                             (context, {"until": [stop], "max_gen_toks": 8})])
    free, stopped = _lm(setup).generate_until(requests)
    assert free == full
    assert stopped == full.split(stop)[0]


def test_cli_without_lm_eval_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--lm-eval-tasks", "arc_easy", "--limit", "2"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "pip install 'llamanas-deploy[lm-eval]'" in err


def test_cli_lm_eval_tasks_exclusive_with_data(capsys):
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--lm-eval-tasks", "arc_easy", "--task", "x.jsonl"])
    assert done.value.code == 2
    assert "--lm-eval-tasks" in capsys.readouterr().err


def test_simple_evaluate_on_a_local_task_agrees_with_multiple_choice(setup, tmp_path):
    """The whole lm-eval path, offline: a task config over a local JSONL file (no download)."""
    from llamanas_deploy import evaluate as ev
    from llamanas_deploy.lm_eval_adapter import evaluate_lm_eval
    from llamanas_deploy.space import load_space

    supernet, subnet, _, _ = setup
    source = supernet.source / "mc_task.jsonl"
    data = tmp_path / "task.jsonl"
    data.write_text("".join(source.read_text().splitlines(keepends=True)[:6]))
    task = {"task": "local_mc", "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "cache")},
            "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
            "target_delimiter": "", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    got = evaluate_lm_eval(supernet, load_space("tiny"), subnet, [task], limit=6)["local_mc"]
    want = ev.multiple_choice(supernet, subnet, ev.load_task("tiny", data)).details
    assert got["acc,none"] == pytest.approx(want["acc"])
    assert got["acc_norm,none"] == pytest.approx(want["acc_norm"])
