"""Our deployed artifact vs the ONNX Runtime GenAI model builder's, side by side in one run.

The builder (`python -m onnxruntime_genai.models.builder`, inside the `onnxruntime-genai`
package) reads a transformers checkpoint, so it can only take a uniform sub-network; ours
exports any. Rows: ours and the builder's at fp32 / int8 / int4 on the same uniform
sub-network (the same weights), plus ours on a heterogeneous one. Each artifact is made by its
CLI in a process of its own (`llamanas export --no-bench`, the builder's module), timed with its
peak RSS; its held-out perplexity is computed on the same `--ppl-tokens` tokens (windows of 128),
and its change against our fp32 export of the same sub-network (itself verified against torch).
Each artifact is timed in two loops that treat both alike:

- `ort`: a Python greedy loop over a plain ONNX Runtime session (one intra-op thread), the
  cache fed back each step (what `llamanas generate` and the profiler do);
- `genai`: onnxruntime-genai's own generator (`og.Generator`, one intra-op thread).

Prompt: the first `--prompt-len` tokens of the model's held-out text (the same for every
artifact), `--new-tokens` greedy tokens; decode ms/token = time of the decode steps / (new
tokens - 1); prefill = the prompt's step. Each artifact runs in its own process; rounds are
interleaved (every artifact once per round, in a new random order each round), medians over
`--rounds` rounds. Greedy agreement, over `--prompts` held-out prompts of
32 tokens (plain ORT loop): the share of generated tokens equal, position by position, to the
builder's at the same precision, and to our fp32 export of the same sub-network.

    python benchmarks/export_vs_builder.py               # the tiny default, 6 x 576 vs 6 layers of mixed widths
    python benchmarks/export_vs_builder.py --rounds 9 --json out.json
    # a real model (`make smollm2`; or its fine-tuned super-network): full network vs a pruned one
    python benchmarks/export_vs_builder.py --model smollm2-135m --space smollm2-135m --uniform largest \
        --heterogeneous runs/smollm2-hetero.json --new-tokens 32 --rounds 3

`--gguf FILE` adds llama.cpp running that file (llama-cpp-python, the `llamacpp` extra;
`llamacpp_loop.py`) as one more runner of the same rounds, prompt, clock and thread, with its
perplexity on the same tokens: for SmolLM2, the wheel's own Q4_1 file (`--gguf smollm2-135m`
finds it), the full network, so compare it with `--uniform largest`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llamacpp_loop import LlamaCppLoop

from llamanas_deploy.cli.common import table
from llamanas_deploy.evaluate import load_heldout
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.onnx_model.artifact import copy_tokenizer
from llamanas_deploy.runtime import perplexity
from llamanas_deploy.space import load_space

PRECISIONS = ("fp32", "int8", "int4")
LLAMACPP = ("llama.cpp", "gguf")
AGREEMENT_PROMPT = 32  # tokens of held-out text per agreement prompt
PPL_WINDOW = 128
UNIFORM = '{"num_layers": 6, "intermediate_sizes": [576, 576, 576, 576, 576, 576]}'
HETEROGENEOUS = '{"num_layers": 6, "intermediate_sizes": [768, 576, 576, 384, 384, 576]}'


def main() -> None:
    args = parse_args()
    space = load_space(args.space)
    uniform = space.resolve(args.uniform, "--uniform")
    hetero = space.resolve(args.heterogeneous, "--heterogeneous")
    supernet = SuperNetwork.load(args.model)
    model_dir = supernet.source
    heldout = load_heldout(model_dir)
    prompt = heldout[: args.prompt_len]
    prompts = [heldout[i : i + AGREEMENT_PROMPT] for i in range(0, len(heldout) - AGREEMENT_PROMPT, len(heldout) // args.prompts)]
    with tempfile.TemporaryDirectory(prefix="export-vs-builder-") as tmp:
        tmp = Path(args.keep) if args.keep else Path(tmp)
        artifacts, costs = {}, {}
        for precision in PRECISIONS:
            log(f"ours {precision}: export")
            artifacts[("ours", precision)], costs[("ours", precision)] = ours(
                model_dir, args.space, uniform, precision, tmp / f"ours-{precision}", args.max_ppl_increase
            )
        checkpoint = supernet.save_subnet(uniform, tmp / "uniform-checkpoint", space)
        copy_tokenizer(supernet.source, checkpoint)  # the builder also writes the tokenizer files
        del supernet
        for precision in PRECISIONS:
            log(f"builder {precision}: build")
            artifacts[("builder", precision)], costs[("builder", precision)] = builder(
                checkpoint, precision, tmp / f"builder-{precision}", tmp / "cache"
            )
        for precision in PRECISIONS:
            log(f"ours heterogeneous {precision}: export")
            artifacts[("ours hetero", precision)], costs[("ours hetero", precision)] = ours(
                model_dir, args.space, hetero, precision, tmp / f"hetero-{precision}", args.max_ppl_increase
            )
        if args.gguf:
            artifacts[LLAMACPP], costs[LLAMACPP] = gguf_file(args.gguf), None
        sizes = {key: onnx_mib(directory) for key, directory in artifacts.items()}
        log("held-out perplexity")
        ppl_tokens = heldout[: args.ppl_tokens]
        ppls = {key: perplexity(reference_loop(path), ppl_tokens, PPL_WINDOW).perplexity for key, path in artifacts.items()}
        tokens = {key: greedy_tokens(path, prompts[: args.prompts], args.new_tokens) for key, path in artifacts.items()}
        runs = measure(artifacts, prompt, args)
    rows = summarize(sizes, runs, tokens, costs, ppls)
    print(render(rows, args, uniform, hetero))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="Super-network checkpoint (its weights are used).")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--uniform", default=UNIFORM, help="Uniform sub-network the builder can read (JSON, a file, 'largest').")
    parser.add_argument("--heterogeneous", default=HETEROGENEOUS, help="Sub-network with per-layer widths (JSON, a file).")
    parser.add_argument("--ppl-tokens", type=int, default=4096, help="Held-out tokens for perplexity.")
    parser.add_argument("--max-ppl-increase", type=float,
                        help="Our exports' quality gate (%%) [the toolkit's default]: raise it to measure what the default refuses.")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16, help="Held-out prompts for greedy agreement.")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time (one thread: robust on a machine shared with other jobs).")
    parser.add_argument("--gguf", help="A GGUF of the full model for llama.cpp, measured beside ('smollm2-135m': the wheel's Q4_1 file).")
    parser.add_argument("--json", help="Also write the rows to this JSON file.")
    parser.add_argument("--keep", help="Build the artifacts in this new directory and keep them.")
    return parser.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- artifacts ----------------------------------------------------------------------------------
def ours(model_dir: Path, space: str, subnet, precision: str, out: Path, max_ppl_increase: float | None) -> tuple[Path, dict]:
    """Our artifact, made as a user makes it: `llamanas export`, default settings, no measurement."""
    command = [sys.executable, "-m", "llamanas_deploy", "export", "--model", str(model_dir), "--space", space,
               "--subnet", subnet.to_json(), "--precision", precision, "--out", str(out), "--no-bench", "--quiet"]  # fmt: skip
    if max_ppl_increase is not None and precision != "fp32":
        command += ["--max-ppl-increase", str(max_ppl_increase)]
    return out, run_measured(command, f"ours {precision}")


def builder(checkpoint: Path, precision: str, out: Path, cache: Path) -> tuple[Path, dict]:
    """The builder's artifact of the checkpoint (its CLI, as a user runs it)."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(cache)]  # fmt: skip
    return out, run_measured(command, f"builder {precision}")


def run_measured(command: list[str], what: str) -> dict:
    """Run `command`; its wall time and peak RSS (the child's own, from wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed:\n{stderr[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_gib": usage.ru_maxrss / 2**20}


def gguf_file(name_or_path: str) -> Path:
    """A GGUF path, or the file inside a packaged model (`llamanas --model` names)."""
    from llamanas_deploy.model.packaged import PACKAGED_MODELS, packaged_file

    return packaged_file(name_or_path) if name_or_path in PACKAGED_MODELS else Path(name_or_path)


def onnx_mib(path: Path) -> float:
    files = [path] if path.suffix == ".gguf" else path.glob("model.onnx*")
    return sum(p.stat().st_size for p in files) / 2**20


def loops_of(key) -> tuple[str, ...]:
    return ("llama.cpp",) if key == LLAMACPP else ("ort", "genai")


def reference_loop(path: Path, clock=time.perf_counter):
    """The loop perplexity and greedy agreement are computed with: plain ORT, or llama.cpp for a GGUF."""
    return LlamaCppLoop(path, clock) if path.suffix == ".gguf" else OrtLoop(path, clock)


# ---- timing -------------------------------------------------------------------------------------
def measure(artifacts: dict, prompt: list[int], args) -> dict:
    """{(artifact key, loop): [ {prefill_ms, decode_ms, tokens}, ... one per round ]}

    Each artifact lives in its own process (both its loops), so no session's memory placement
    depends on another's; the main process asks them in turn, one at a time.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = {}
    for key, directory in artifacts.items():
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs, directory, args.clock), daemon=True)
        process.start()
        workers[key] = (process, ours)
    keys = [(key, loop) for key in artifacts for loop in loops_of(key)]
    runs: dict = {k: [] for k in keys}
    order = np.random.default_rng(0)
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms every runner up and is dropped
            log(f"round {round_}/{args.rounds}")
            for i in order.permutation(len(keys)):  # a new order each round: no runner always follows the same one
                key, loop = keys[i]
                workers[key][1].send((loop, prompt, args.new_tokens))
                result = workers[key][1].recv()
                if round_:
                    runs[keys[i]].append(result)
    finally:
        for process, pipe in workers.values():
            pipe.send(None)
            process.join()
    return runs


def _worker(pipe, path: Path, clock_name: str) -> None:
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    if path.suffix == ".gguf":
        loops = {"llama.cpp": LlamaCppLoop(path, clock)}
    else:
        loops = {"ort": OrtLoop(path, clock), "genai": GenaiLoop(path, clock)}
    while (request := pipe.recv()) is not None:
        loop, prompt, new_tokens = request
        pipe.send(loops[loop].run(prompt, new_tokens))


class OrtLoop:
    """Greedy decoding over a plain ORT session, feeding whatever inputs the graph declares."""

    def __init__(self, directory: Path, clock):
        import onnxruntime as ort

        self.clock = clock
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        decoder = json.loads((directory / "genai_config.json").read_text())["model"]["decoder"]
        self.kv_heads, self.head_dim = decoder["num_key_value_heads"], decoder["head_size"]
        self.vocab_size = int(self.session.get_outputs()[0].shape[2])

    def empty_past(self, batch: int) -> dict:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return {n: empty for n in self.past}

    def forward(self, ids: np.ndarray, past: dict):
        """What `runtime.perplexity` calls: a batch of windows from an empty cache."""
        batch, seq = ids.shape
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, seq), dtype=np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq))
        return self.session.run(None, feeds | past)[0], None

    def step(self, ids: np.ndarray, past: dict, past_len: int):
        seq = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, past_len + seq), dtype=np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(past_len, past_len + seq, dtype=np.int64)[None]
        outputs = self.session.run(None, feeds | past)
        return outputs[0], dict(zip(self.past, outputs[1:]))

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        start = self.clock()
        logits, past = self.step(np.array([prompt], dtype=np.int64), self.empty_past(1), 0)
        tokens = [int(logits[0, -1].argmax())]
        prefill = self.clock() - start
        start = self.clock()
        while len(tokens) < new_tokens:
            logits, past = self.step(np.array([[tokens[-1]]], dtype=np.int64), past, len(prompt) + len(tokens) - 1)
            tokens.append(int(logits[0, -1].argmax()))
        decode = self.clock() - start
        return {"prefill_ms": prefill * 1e3, "decode_ms": decode * 1e3 / (new_tokens - 1), "tokens": tokens}


class GenaiLoop:
    """onnxruntime-genai's generator on the artifact's genai_config.json, one intra-op thread."""

    def __init__(self, directory: Path, clock):
        import onnxruntime_genai as og

        self.clock = clock
        config = og.Config(str(directory))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}}}))
        self.og, self.model = og, og.Model(config)

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(self.model, params)
        start = self.clock()
        generator.append_tokens(np.array([prompt], dtype=np.int32))
        tokens = [int(generator.get_next_tokens()[0])]
        prefill = self.clock() - start
        start = self.clock()
        while len(tokens) < new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        decode = self.clock() - start
        return {"prefill_ms": prefill * 1e3, "decode_ms": decode * 1e3 / (new_tokens - 1), "tokens": tokens}


# ---- report -------------------------------------------------------------------------------------
def greedy_tokens(path: Path, prompts: list[list[int]], new_tokens: int) -> list[int]:
    loop = reference_loop(path)
    return [t for prompt in prompts for t in loop.run(prompt, new_tokens)["tokens"]]


def summarize(sizes: dict, runs: dict, tokens: dict, costs: dict, ppls: dict) -> list[dict]:
    """One row per artifact and loop; ratios against the builder's artifact of the same precision
    (uniform rows only); greedy agreement with the builder at that precision and with our own
    fp32 export of the same sub-network; perplexity change against that fp32 export; every
    quantized ONNX row's decode against llama.cpp's (when measured)."""

    def agreement(key, reference) -> float | None:
        if reference not in sizes or reference == key:
            return None
        mine, theirs = tokens[key], tokens[reference]
        return sum(a == b for a, b in zip(mine, theirs)) / len(mine)

    rows = []
    for key, mib in sizes.items():
        who, precision = key
        uniform = who != "ours hetero"
        fp32 = ("ours" if uniform else who, "fp32")
        for loop in loops_of(key):
            samples = runs[(key, loop)]
            row = {
                "artifact": who, "precision": precision, "loop": loop, "mib": mib,
                "prefill_ms": statistics.median(r["prefill_ms"] for r in samples),
                "decode_ms": statistics.median(r["decode_ms"] for r in samples),
                "agreement_vs_builder": agreement(key, ("builder", precision)) if uniform else None,
                "agreement_vs_fp32": agreement(key, fp32) if who != "builder" else None,
                "export_s": (costs[key] or {}).get("seconds"), "peak_rss_gib": (costs[key] or {}).get("peak_rss_gib"),
                "ppl": ppls[key], "ppl_change_pct": (ppls[key] / ppls[fp32] - 1) * 100,
            }  # fmt: skip
            row["tok_s"] = 1e3 / row["decode_ms"]
            rows.append(row)
    builder = {(r["precision"], r["loop"]): r for r in rows if r["artifact"] == "builder"}
    for r in rows:
        base = builder.get((r["precision"], r["loop"])) if r["artifact"].startswith("ours") and r["artifact"] != "ours hetero" else None
        for figure in ("decode_ms", "prefill_ms", "mib"):
            r[f"{figure}_vs_builder"] = r[figure] / base[figure] if base else None
    llamacpp = next((r for r in rows if r["artifact"] == LLAMACPP[0]), None)
    for r in rows:
        quantized = r["precision"] in ("int8", "int4")
        r["decode_ms_vs_llamacpp"] = r["decode_ms"] / llamacpp["decode_ms"] if llamacpp and quantized else None
    return rows


def render(rows: list[dict], args, uniform, hetero) -> str:
    def fmt(value, spec, suffix=""):
        return "—" if value is None else format(value, spec) + suffix

    head = ["artifact", "precision", "loop", "export s", "peak RSS GiB", "MiB", "held-out ppl", "ppl vs our fp32",
            "prefill ms", "decode ms/token", "tokens/s", "decode vs builder",
            "prefill vs builder", "size vs builder", "decode vs llama.cpp", "agrees w/ builder", "agrees w/ our fp32"]  # fmt: skip
    order = ["builder", "ours", "ours hetero", LLAMACPP[0]]
    body = [
        [r["artifact"], r["precision"], r["loop"], fmt(r["export_s"], ".1f"), fmt(r["peak_rss_gib"], ".2f"),
         fmt(r["mib"], ".2f"), fmt(r["ppl"], ".2f"), fmt(r["ppl_change_pct"], "+.1f", " %"), fmt(r["prefill_ms"], ".2f"),
         fmt(r["decode_ms"], ".3f"), fmt(r["tok_s"], ".0f"), fmt(r["decode_ms_vs_builder"], ".2f", "×"),
         fmt(r["prefill_ms_vs_builder"], ".2f", "×"), fmt(r["mib_vs_builder"], ".2f", "×"),
         fmt(r["decode_ms_vs_llamacpp"], ".2f", "×"), fmt(r["agreement_vs_builder"], ".0%"), fmt(r["agreement_vs_fp32"], ".0%")]
        for r in sorted(rows, key=lambda r: (r["loop"], (*PRECISIONS, LLAMACPP[1]).index(r["precision"]), order.index(r["artifact"])))
    ]  # fmt: skip
    note = (
        f"uniform {uniform.to_dict()['intermediate_sizes']}, heterogeneous {hetero.to_dict()['intermediate_sizes']}; "
        f"perplexity on {args.ppl_tokens} held-out tokens (windows of {PPL_WINDOW}); "
        f"prompt {args.prompt_len}, {args.new_tokens} greedy tokens, 1 thread, {args.clock} clock, "
        f"median of {args.rounds} interleaved rounds; greedy agreement over {args.prompts} held-out prompts; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if args.gguf:
        note += f"; llama.cpp: {Path(gguf_file(args.gguf)).name} (the full model), its own loop, same thread and clock"
    return table(body, head) + "\n" + note


if __name__ == "__main__":
    main()
