"""The `llamacpp` profiler backend on the built-in `tiny` model: GGUF files run by llama.cpp, end to end
through `llamanas profile` and `llamanas fit`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llamanas_deploy.cli import main  # noqa: E402
from llamanas_deploy.errors import BadInputError  # noqa: E402
from llamanas_deploy.predict.dataset import MIN_SUBNETS  # noqa: E402
from llamanas_deploy.profiler.backends import get_backend  # noqa: E402
from llamanas_deploy.profiler.backends import llamacpp_backend  # noqa: E402
from llamanas_deploy.profiler.base import BackendUnavailable, Shapes  # noqa: E402
from llamanas_deploy.profiler.stats import Protocol  # noqa: E402
from llamanas_deploy.space import load_space  # noqa: E402

FAST = ["--prompt-len", "8", "--context-len", "8", "--gen-len", "4", "--warmup", "1", "--repeats", "3", "--quiet"]
SETTING = ["--backend", "llamacpp", "--precision", "q8_0", "--threads", "1", "--clock", "cpu"]
SAMPLES = MIN_SUBNETS  # enough for a fit


def profile_args(out: Path, *extra: str) -> list[str]:
    return ["profile", "--model", "tiny", "--space", "tiny", "--target", "test", "--out", str(out), *SETTING, *FAST,
            *extra]  # fmt: skip


def cli(*args: str) -> tuple[int, str, str]:
    """`llamanas ARGS` in-process: exit code, stdout, stderr (module fixtures have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(list(args))
    return done.value.code, out.getvalue(), err.getvalue()


def rows(profile_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (profile_dir / "measurements.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[Path, list[str]]:
    """A q8_0 profile of `SAMPLES` sub-networks, two visits each, and the ids of the sub-networks written as GGUF."""
    written: list[str] = []
    write = llamacpp_backend.write_model_gguf
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llamacpp_backend, "write_model_gguf",
                      lambda net, subnet, *args: written.append(subnet.id) or write(net, subnet, *args))  # fmt: skip
        out = tmp_path_factory.mktemp("llamacpp") / "prof"
        code, _, err = cli(*profile_args(out, "--samples", str(SAMPLES), "--visits", "2"))
    assert code == 0, err
    return out, written


def test_profile_records_llamacpp_figures(profiled):
    out, _ = profiled
    records = rows(out)
    planned = [r for r in records if r.get("role") != "anchor"]
    assert len(planned) == 2 * SAMPLES and any(r.get("role") == "anchor" for r in records)
    for r in records:
        setting = (r["backend"], r["precision"], r["device"], r["threads"], r["clock"])
        assert setting == ("llamacpp", "q8_0", "cpu", 1, "cpu")
        assert r["weights"] == "checkpoint" and r["model_bytes"] > 0
        for figure in ("prefill_ms", "decode_ms", "throughput_tok_s"):
            assert r[figure]["median"] > 0 and r[figure]["best"] > 0


def test_each_subnetwork_is_written_once(profiled):
    out, written = profiled
    assert sorted(written) == sorted({r["subnet_id"] for r in rows(out)})  # not once per visit


def test_profile_resumes(profiled, tmp_path):
    out, _ = profiled
    copy = tmp_path / "prof"
    copy.mkdir()
    lines = (out / "measurements.jsonl").read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if '"role"' not in line)  # the last planned visit
    (copy / "measurements.jsonl").write_text("".join(lines[:last] + lines[last + 1 :]))
    (copy / "fingerprint.json").write_text((out / "fingerprint.json").read_text())
    code, stdout, err = cli(*profile_args(copy, "--samples", str(SAMPLES), "--visits", "2", "--json"))
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["measured_now"], summary["records"]) == (1, 2 * SAMPLES)
    again = [r for r in rows(copy) if r.get("role") != "anchor"][-1]
    removed = json.loads(lines[last])
    assert (again["subnet_id"], again["visit"]) == (removed["subnet_id"], removed["visit"])


def test_fit_on_a_llamacpp_profile(profiled, tmp_path):
    out, _ = profiled
    predictor = tmp_path / "llamacpp-decode_ms.json"
    code, _, err = cli("fit", "--profile", str(out), "--metric", "decode_ms", "--out", str(predictor), "--json")
    assert code == 0, err
    metadata = json.loads(predictor.read_text())["metadata"]
    assert (metadata["backend"], metadata["precision"], metadata["target"]) == ("llamacpp", "q8_0", "test")


@pytest.mark.parametrize("precision", ["f16", "q4_0"])
def test_every_precision_measures(precision):
    backend = get_backend("llamacpp")("tiny", precision, "cpu", 1, weights="random")
    subnet, shapes = load_space("tiny").smallest, Shapes(prompt_len=8, context_len=8, gen_len=4)
    backend.warm_up(subnet, shapes)
    measured = backend.measure(subnet, shapes, Protocol(warmup=1, repeats=3, visits=1)).to_dict()
    assert backend.exports_made == 1 and measured["weights"] == "random" and measured["model_bytes"] > 0
    assert all(measured[figure]["median"] > 0 for figure in ("prefill_ms", "decode_ms", "throughput_tok_s"))


def test_batch_above_one_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    written: list[str] = []
    monkeypatch.setattr(llamacpp_backend, "write_model_gguf", lambda net, subnet, *args: written.append(subnet.id))
    code, out, err = cli(*profile_args(tmp_path / "prof", "--samples", "1", "--batch-size", "2"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: --batch-size: backend llamacpp decodes one sequence: expected 1, got 2"), err
    assert out == "" and written == [] and not (tmp_path / "prof").exists()


def test_the_profile_records_llama_cpp_python_s_version(profiled):
    import llama_cpp

    out, _ = profiled
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["device"]["llama_cpp_python"] == llama_cpp.__version__
    assert {r["fingerprint_id"] for r in rows(out)} == {fingerprint["fingerprint_id"]}


def test_a_model_without_a_tokenizer_is_refused(small_checkpoint):
    with pytest.raises(BadInputError, match="tokenizer.json"):
        get_backend("llamacpp")(small_checkpoint, "q8_0", "cpu", 1)


def test_unavailable_without_llama_cpp(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "llama_cpp" else real(name, *args))
    with pytest.raises(BackendUnavailable, match=r"llamanas-deploy\[llamacpp\]"):
        get_backend("llamacpp").validate("cpu", "q8_0")


def test_decode_holds_its_context_whatever_ran_before():
    """The prefill (8 tokens) runs between the decode's set-up and its steps, as `warm_up` and `measure` run
    them: every timed step still sees a cache of exactly `context_len` of the decode's own tokens."""
    backend = get_backend("llamacpp")("tiny", "q8_0", "cpu", 1, weights="random")
    subnet, shapes = load_space("tiny").smallest, Shapes(prompt_len=8, context_len=16, gen_len=4)
    backend.load(subnet)
    prefill, decode = backend.prefill(shapes), backend.decode(shapes)
    for workload in (prefill, decode, prefill, decode):
        workload.reset()
        workload.run()
    llm = backend._llm
    assert llm.n_tokens == shapes.context_len + 1
    decode.reset()
    assert llm.n_tokens == shapes.context_len
    assert llm.input_ids[: shapes.context_len].tolist() == backend._tokens(shapes.context_len)
    backend.unload()
