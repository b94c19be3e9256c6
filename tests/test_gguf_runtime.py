"""`llamanas bench` and `llamanas generate` on a GGUF artifact: llama.cpp runs the file the export sealed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from conftest import run_cli  # noqa: E402

from llamanas_deploy import gguf_runtime  # noqa: E402
from llamanas_deploy.errors import BadInputError  # noqa: E402
from llamanas_deploy.exporter.gguf import GGUFSettings, export_gguf  # noqa: E402
from llamanas_deploy.gguf_runtime import GGUFText, LlamaCppDecoder  # noqa: E402
from llamanas_deploy.profiler.backends import llamacpp_backend  # noqa: E402
from llamanas_deploy.model.families import resolve_model_path  # noqa: E402
from llamanas_deploy.runtime import Sampling, generate, generate_text, open_artifact  # noqa: E402

PROMPT = "The for statement"
QUICK_BENCH = ("--threads", "1", "--repeats", "3", "--warmup", "0", "--visits", "1", "--gen-len", "4")
FIGURES = ("prefill_ms", "decode_ms", "throughput_tok_s")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")  # fmt: skip


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """The smallest `tiny` sub-network at q8_0, from a copy of the model given a chat template."""
    root = tmp_path_factory.mktemp("gguf-runtime")
    model = Path(shutil.copytree(resolve_model_path("tiny"), root / "model"))
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    export_gguf(model, "tiny", "smallest", GGUFSettings("q8_0", threads=1, max_eval_tokens=512), out=root / "q8_0")
    return root / "q8_0"


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err


def test_bench_measures_the_gguf_with_llamacpp(artifact, capsys):
    code, out, err = run_cli(capsys, "bench", "--artifact", str(artifact), *QUICK_BENCH, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["backend"] == "llamacpp" and result["precision"] == "q8_0" and result["device"] == "cpu"
    assert result["threads"] == 1 and result["clock"] == "wall" and result["shapes"]["gen_len"] == 4
    assert result["subnet_id"] == open_artifact(artifact).manifest["subnet_id"]
    assert "io_binding" not in result and "vs_predicted" not in result  # an ONNX field; no prediction in the manifest
    for figure in FIGURES:
        assert result[figure]["median"] > 0
    assert result["model_bytes"] == open_artifact(artifact).manifest["size"]["gguf_bytes"]
    code, out, _ = run_cli(capsys, "bench", "--artifact", str(artifact), *QUICK_BENCH)
    assert code == 0 and out.startswith("llamacpp q8_0 on cpu") and "decode ms/token" in out


def test_bench_refuses_a_batch_above_one_before_measuring(artifact, capsys, monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr(llamacpp_backend.ArtifactBackend, "load", lambda self, subnet: loaded.append(subnet.id))
    code, out, err = run_cli(capsys, "bench", "--artifact", str(artifact), *QUICK_BENCH, "--batch-size", "2")
    assert_one_line_error(code, err, "--batch-size: backend llamacpp decodes one sequence: expected 1, got 2")
    assert out == "" and loaded == []


def test_generation_holds_the_prompt_and_new_tokens_not_the_trained_context(artifact, monkeypatch):
    decoders: list[LlamaCppDecoder] = []
    real = gguf_runtime.generate
    monkeypatch.setattr(gguf_runtime, "generate", lambda decoder, *args: decoders.append(decoder) or real(decoder, *args))
    small = generate_text(artifact, PROMPT, 8, Sampling(), threads=1)
    path = open_artifact(artifact).gguf_path
    full = LlamaCppDecoder(path, threads=1)  # the context the file was made for, as generation opened it before
    prompt = full.encode(PROMPT)
    assert full.context_length == GGUFText(path).trained_context
    assert small.prompt_tokens + 8 <= decoders[0].context_length < full.context_length  # llama.cpp rounds up
    greedy = real(full, prompt, 8)
    assert (small.tokens, small.text) == (greedy.tokens, full.decode(greedy.tokens))


def test_generate_continues_the_prompt(artifact, capsys):
    args = ("generate", "--artifact", str(artifact), "--prompt", PROMPT, "--max-new-tokens", "8")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert out.startswith(PROMPT) and "new tokens" in err
    code, out, err = run_cli(capsys, *args, "--temperature", "0.8", "--top-k", "20", "--seed", "3", "--threads", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert 1 <= result["new_tokens"] <= 8 and result["tok_s"] > 0 and isinstance(result["text"], str)
    assert result["prompt_tokens"] == len(LlamaCppDecoder(open_artifact(artifact).gguf_path).encode(PROMPT))


def test_sampling_is_seeded_and_top_k_1_is_greedy(artifact):
    def tokens(sampling: Sampling) -> list[int]:
        return generate_text(artifact, PROMPT, 6, sampling, threads=1).tokens

    assert tokens(Sampling(temperature=1.0, top_k=1, seed=1)) == tokens(Sampling())
    assert tokens(Sampling(temperature=1.5, seed=4)) == tokens(Sampling(temperature=1.5, seed=4))


def test_generation_stops_at_an_eos_token(artifact):
    decoder = LlamaCppDecoder(open_artifact(artifact).gguf_path, threads=1)
    free = generate(decoder, [5, 6, 7], 8).tokens  # greedy: the same tokens every time
    ended = generate(decoder, [5, 6, 7], 8, eos_ids={free[3]})
    assert ended.tokens == free[: free.index(free[3]) + 1] and ended.stopped_at_eos


def test_chat_goes_through_the_template_in_the_file(artifact, capsys):
    decoder, rendered = LlamaCppDecoder(open_artifact(artifact).gguf_path), "<|user|>hi</s><|assistant|>"
    assert decoder.chat_prompt("hi") == rendered
    code, out, err = run_cli(capsys, "generate", "--artifact", str(artifact), "--chat", "hi", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["prompt_tokens"] == len(decoder.encode(rendered))
    del decoder.llm.metadata["tokenizer.chat_template"]
    with pytest.raises(BadInputError, match="model.gguf: the artifact has no chat template"):
        decoder.chat_prompt("hi")


def test_too_many_new_tokens_for_the_context_are_refused(artifact, capsys):
    context = GGUFText(open_artifact(artifact).gguf_path).trained_context
    code, _, err = run_cli(capsys, "generate", "--artifact", str(artifact), "--prompt", PROMPT,
                           "--max-new-tokens", str(context))  # fmt: skip
    assert_one_line_error(code, err, "--max-new-tokens", f"{context} positions")


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_tampered_gguf_is_refused(artifact, tmp_path, capsys, command):
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    with open(copy / "model.gguf", "r+b") as gguf:
        gguf.seek(-1, 2)
        last = gguf.read(1)
        gguf.seek(-1, 2)
        gguf.write(bytes([last[0] ^ 1]))
    extra = ["--prompt", "hi"] if command == "generate" else list(QUICK_BENCH)
    code, out, err = run_cli(capsys, command, "--artifact", str(copy), *extra)
    assert_one_line_error(code, err, "model.gguf", "sha256", "does not match")
    assert out == ""
