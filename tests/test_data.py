"""Data files (plain, JSONL, Alpaca), the pydoc corpus split, tokenizing/chunking, the MC task builder."""

from __future__ import annotations

import json
import re

import pytest

from llamanas_deploy import corpus
from llamanas_deploy.data import chunk, format_alpaca, read_texts, tokenize
from llamanas_deploy.errors import BadInputError


def test_plain_text_is_one_document(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\nsecond line\n")
    assert read_texts(tmp_path / "a.txt") == ["hello world\nsecond line\n"]


def test_jsonl_reads_the_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n{"text": "x", "body": "three"}\n')
    assert read_texts(path) == ["one", "two", "x"]
    path.write_text('{"body": "b1"}\n{"body": "b2"}\n')
    assert read_texts(path, text_field="body") == ["b1", "b2"]


def test_alpaca_records_use_the_prompt_template(tmp_path):
    records = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records))
    plain, with_input = read_texts(path)
    assert "### Instruction:\nAdd 2 and 3.\n\n### Response:\n5" in plain and "### Input" not in plain
    assert "### Input:\nbonjour\n\n### Response:\nhello" in with_input
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("d.jsonl", '{"text": "ok"}\n{"text": 5}\n', r"d.jsonl:2: expected a JSON object with a string field 'text'"),
        ("d.jsonl", '{"text": "ok"}\n{"text": "unterminated\n', r"d.jsonl:2: not valid JSON"),
        ("a.json", '{"instruction": "x", "output": "y"}', r"a.json: Alpaca data must be a JSON list"),
        ("a.json", '[{"instruction": "x"}]', r"a.json: record 0: expected an object with string fields"),
        ("e.txt", "   \n", r"e.txt: contains no text"),
    ],
)
def test_bad_data_files_name_the_file_and_problem(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    with pytest.raises(BadInputError, match=problem):
        read_texts(tmp_path / name)


def test_unreadable_files(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(BadInputError, match="bin.txt: not UTF-8"):
        read_texts(tmp_path / "bin.txt")
    with pytest.raises(BadInputError, match="missing.txt: no such data file"):
        read_texts(tmp_path / "missing.txt")


def test_format_alpaca_rejects_non_string_input():
    with pytest.raises(BadInputError, match="field 'input' must be a string"):
        format_alpaca({"instruction": "a", "input": 3, "output": "b"}, "src")


def test_corpus_split_is_a_partition_of_the_topics():
    train, heldout = corpus.train_topics(), corpus.heldout_topics()
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(corpus.pydoc_topics())
    held_chars = sum(map(len, heldout.values()))
    assert 0.03 < held_chars / (held_chars + sum(map(len, train.values()))) < 0.3
    assert read_texts("pydoc-heldout") == list(heldout.values())


def test_tokenize_appends_eos_and_chunk_drops_the_tail():
    tokenizer = corpus.train_tokenizer(["abc abd abe"] * 10, vocab_size=270)
    ids = tokenize(["abc", "abd abe"], tokenizer, eos_id=2)
    assert ids.count(2) == 2 and ids[-1] == 2
    assert tokenizer.decode([i for i in ids if i != 2]) == "abcabd abe"
    rows = chunk(list(range(10)), 3)
    assert rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert chunk(list(range(10)), 3, max_tokens=6).shape == (2, 3)
    with pytest.raises(BadInputError, match="fewer than one sequence"):
        chunk([1, 2], 3)


def test_task_builder_puts_the_true_continuation_among_distractors_from_other_documents():
    documents = list(corpus.heldout_topics().values())
    task = corpus.build_task(documents, n=40, seed=3)
    assert task == corpus.build_task(documents, n=40, seed=3)
    text = "\n\n".join(documents)
    squeeze = lambda s: re.sub(r"\s+", " ", s)  # noqa: E731 - the text's own whitespace may differ
    for ex in task:
        assert len(ex["choices"]) == 4 == len(set(ex["choices"]))
        assert squeeze(ex["context"] + ex["choices"][ex["answer"]]) in squeeze(text)
        leads = {re.match(r"\s*", c).group() for c in ex["choices"]}
        assert len(leads) == 1  # whitespace gives nothing away
        home = [d for d in documents if squeeze(ex["context"]) in squeeze(d)]
        others = [squeeze(d) for d in documents if d is not home[0]]
        assert all(any(squeeze(c.strip()) in d for d in others) for i, c in enumerate(ex["choices"]) if i != ex["answer"])
    assert len({ex["answer"] for ex in task}) == 4
