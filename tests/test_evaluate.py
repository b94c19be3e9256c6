"""Evaluators on models forced to known distributions, tasks with unambiguous answers, the shipped `tiny`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llamanas_deploy import evaluate as ev
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

FAVOURITE = 7  # the token the forced model predicts with probability P_FAV
P_FAV = 0.9
SUBNETS = [SubnetConfig(4, (128,) * 4), SubnetConfig(2, (32, 96)), SubnetConfig(3, (64, 32, 128))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models gain nothing from more threads, and lose 10x when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def uniform(small_checkpoint) -> SuperNetwork:
    """lm_head all zero: every logit is 0, so every next token has probability 1/vocab."""
    supernet = SuperNetwork.load(small_checkpoint)
    with torch.no_grad():
        supernet.model.lm_head.weight.zero_()
    return supernet


@pytest.fixture()
def forced(small_checkpoint) -> SuperNetwork:
    """Whatever the input, p(FAVOURITE) = P_FAV and the other tokens share the rest evenly.

    Zeroed attention/MLP outputs leave the residual stream equal to the embedding; every
    embedding is the same vector, so the final norm outputs ones; lm_head reads one logit.
    """
    supernet = SuperNetwork.load(small_checkpoint)
    model = supernet.model
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    logit = math.log(P_FAV * (vocab - 1) / (1 - P_FAV))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(0.5)
        model.lm_head.weight.zero_()
        model.lm_head.weight[FAVOURITE] = logit / hidden
    return supernet


@pytest.mark.parametrize("subnet", SUBNETS, ids=lambda s: s.id)
def test_uniform_model_has_perplexity_vocab_size(uniform, subnet):
    ids = torch.randint(0, 256, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    result = ev.perplexity(uniform, subnet, ids, seq_len=64, batch_size=3)
    assert result.value == pytest.approx(256, rel=1e-5)
    assert result.num_tokens == 10 * 63  # 10 windows of 64 tokens, 63 predictions each
    assert result.metric == "perplexity" and not result.higher_is_better and result.subnet_id == subnet.id


def test_forced_model_perplexity_is_one_over_its_probability(forced):
    on_favourite = ev.perplexity(forced, SUBNETS[1], [FAVOURITE] * 256, seq_len=32)
    # (rel 1e-3: the final RMSNorm's epsilon scales the logit by 0.99998)
    assert on_favourite.value == pytest.approx(1 / P_FAV, rel=1e-3)
    elsewhere = ev.perplexity(forced, SUBNETS[1], [3] * 256, seq_len=32)
    assert elsewhere.value == pytest.approx(255 / (1 - P_FAV), rel=1e-3)


def test_max_tokens_bounds_the_work(uniform):
    ids = list(range(256)) * 4
    assert ev.perplexity(uniform, SUBNETS[0], ids, seq_len=64, max_tokens=200).num_tokens == 3 * 63


def test_perplexity_inside_supernet_equals_extracted_model_and_leaves_it_unchanged(small_checkpoint):
    supernet = SuperNetwork.load(small_checkpoint)
    before = supernet.weights_sha256()
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    subnet = SUBNETS[2]
    result = ev.perplexity(supernet, subnet, ids)
    logits = supernet.extract(subnet)(input_ids=ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert result.value == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert supernet.weights_sha256() == before
    assert len(supernet.model.model.layers) == 4 and supernet.model.config.num_hidden_layers == 4


def _task(choices_ids, choice_texts, answers) -> ev.TokenizedTask:
    examples = tuple(ev.MCExample("ctx", tuple(t), a) for t, a in zip(choice_texts, answers))
    contexts = tuple((1, 2, 3) for _ in examples)
    return ev.TokenizedTask(examples, contexts, tuple(tuple(map(tuple, c)) for c in choices_ids), "constructed")


def test_unambiguous_task_is_answered(forced):
    # the favourite token's continuation is ~1000x likelier than any other
    choices = [[(FAVOURITE, FAVOURITE), (3, 4)], [(5,), (FAVOURITE,), (9,)], [(4, 4, 4), (6, 6, 6), (FAVOURITE,) * 3]]
    texts = [["ab", "cd"], ["a", "b", "c"], ["abc", "def", "ghi"]]
    right = ev.multiple_choice(forced, SUBNETS[1], _task(choices, texts, [0, 1, 2]), batch_size=2)
    assert right.details["acc"] == right.details["acc_norm"] == right.value == 1.0
    assert right.num_examples == 3 and right.higher_is_better
    assert right.details["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)
    wrong = ev.multiple_choice(forced, SUBNETS[1], _task(choices, texts, [1, 0, 0]), metric="acc")
    assert wrong.value == 0.0
    assert ev.multiple_choice(forced, SUBNETS[1], _task(choices, texts, [0, 1, 2]), max_examples=2).num_examples == 2


def test_length_normalization_divides_by_bytes(forced):
    # raw sums prefer the one-token choice; per byte, the 12-byte three-token choice wins
    task = _task([[(FAVOURITE,), (FAVOURITE,) * 3]], [["a", "b" * 12]], [1])
    result = ev.multiple_choice(forced, SUBNETS[0], task)
    assert result.details == {"acc": 0.0, "acc_norm": 1.0, "chance": 0.5}


def test_tokenize_task_takes_continuation_past_the_context():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    task = ev.tokenize_task([ev.MCExample("the cat", (" sat", " mat"), 0)], tokenizer)
    whole = tokenizer.encode("the cat sat").ids
    assert task.context_ids[0] + task.choice_ids[0][0] == tuple(whole)


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"context": "a", "choices": ["b"], "answer": 0}', "at least 2"),
        ('{"context": "a", "choices": ["b", "c"], "answer": 2}', "index into choices"),
        ('{"context": "", "choices": ["b", "c"], "answer": 0}', "non-empty string"),
        ('{"context": "a", "choices": ["b", "c"]', "not valid JSON"),
        ('{"context": "a", "choices": ["b", "c"], "answer": 0, "label": 1}', "expected an object"),
    ],
)
def test_bad_task_lines_are_named(tmp_path, line, problem):
    path = tmp_path / "task.jsonl"
    path.write_text('{"context": "a", "choices": ["b", "c"], "answer": 1}\n' + line + "\n")
    with pytest.raises(BadInputError, match=rf"task.jsonl:2: .*{problem}"):
        ev.read_task(path)


def test_shipped_tiny_full_network_beats_its_smallest():
    from transformers import LlamaForCausalLM

    from llamanas_deploy.model.families import resolve_model_path

    space = load_space("tiny")
    supernet = SuperNetwork.load("tiny")
    supernet.check_space(space)
    ids = ev.load_heldout("tiny", max_tokens=1024)
    full = ev.perplexity(supernet, space.largest, ids)
    smallest = ev.perplexity(supernet, space.smallest, ids)
    assert full.value < smallest.value < 4096
    task = ev.load_task("tiny", max_examples=40)
    assert len(task) == 40 and all(len(e.choices) == 4 for e in task.examples)
    # a standard Hugging Face checkpoint: transformers loads it as it is, same numbers
    hf = LlamaForCausalLM.from_pretrained(resolve_model_path("tiny"), dtype=torch.float32)
    rows = torch.tensor(ids[:256]).view(2, 128)
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=rows).logits, supernet.model(input_ids=rows).logits, atol=1e-4)


def test_shipped_task_file_is_well_formed():
    from llamanas_deploy.model.families import resolve_model_path

    lines = (resolve_model_path("tiny") / "mc_task.jsonl").read_text().splitlines()
    examples = ev.read_task(resolve_model_path("tiny") / "mc_task.jsonl")
    assert len(examples) == len(lines) >= 200
    assert all(json.loads(line)["choices"][json.loads(line)["answer"]] for line in lines)


def test_evaluate_subnet_is_the_evaluators_on_the_named_subnet():
    space = load_space("tiny")
    supernet = SuperNetwork.load("tiny")
    events = []
    result = ev.evaluate_subnet(supernet, "tiny", "smallest", ev.EvalSettings(max_tokens=256), callback=events.append)
    direct = ev.perplexity(supernet, space.smallest, ev.load_heldout("tiny"), max_tokens=256)
    assert result.value == direct.value and result.num_tokens == direct.num_tokens
    assert result.to_dict() == direct.to_dict() | {"subnet": space.smallest.to_dict(), "space_id": space.id}
    assert [e.message for e in events] == [f"evaluating sub-network {space.smallest.id} (4 layers) of {supernet.source}"]
    task = ev.evaluate_subnet("tiny", space, space.largest, ev.EvalSettings(task=supernet.source / "mc_task.jsonl",
                                                                           max_examples=8, metric="acc"))  # fmt: skip
    assert task.metric == "acc" and task.num_examples == 8 and task.subnet == space.largest


@pytest.mark.parametrize(
    "settings, param",
    [({"data": "a.txt", "task": "t.jsonl"}, "task"), ({"seq_len": 1}, "seq_len"), ({"max_tokens": 0}, "max_tokens"),
     ({"max_examples": 0}, "max_examples"), ({"metric": "f1"}, "metric")],
)  # fmt: skip
def test_eval_settings_name_the_wrong_parameter(settings, param):
    with pytest.raises(BadInputError) as err:
        ev.EvalSettings(**settings)
    assert err.value.param == param
