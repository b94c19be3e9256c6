"""Shape-only profiling holds one sub-network at a time: a 10 GB super-network is profiled in MBs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SMALL_CONFIG, write_space
from llamanas_deploy.cli import main

CLEAR_REFS = Path("/proc/self/clear_refs")

# 48 layers of hidden 1024 and MLP 16384: about 10 GB of fp32 weights for the whole super-network
BIG = SMALL_CONFIG | {"hidden_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 8,
                      "num_hidden_layers": 48, "intermediate_size": 16384}  # fmt: skip


def _kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc to reset the peak resident set")
def test_peak_memory_stays_near_one_sub_network(capsys, tmp_path):
    full_bytes = 4 * BIG["num_hidden_layers"] * (4 * 1024 * 1024 + 3 * 1024 * BIG["intermediate_size"])
    assert full_bytes > 9 * 1024**3
    model = tmp_path / "big"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(BIG))
    space = write_space(
        tmp_path / "big-space.json",
        super_network={"num_hidden_layers": 48, "intermediate_size": 16384},
        depth={"choices": [1, 2], "policy": "first"},
        layer_dims={"intermediate_sizes": {"choices": [256, 512], "policy": "first"}},
    )
    out = tmp_path / "prof"
    threads = torch.get_num_threads()
    CLEAR_REFS.write_text("5")
    baseline = _kib("VmRSS")
    try:
        with pytest.raises(SystemExit) as done:
            main(["profile", "--model", str(model), "--space", str(space), "--target", "big", "--out", str(out),
                  "--samples", "3", "--prompt-len", "8", "--context-len", "8", "--gen-len", "2",
                  "--warmup", "0", "--repeats", "3", "--attempts", "1", "--visits", "1", "--quiet"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    growth_mib = (_kib("VmHWM") - baseline) / 1024
    assert done.value.code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    largest_mib = max(r["model_bytes"] for r in rows) / 1024**2
    assert len([r for r in rows if r.get("role") != "anchor"]) == 3 and largest_mib < 60
    # the process grew by about one sub-network (plus allocator slack), nowhere near the super-network
    assert growth_mib < 4 * largest_mib + 256, (growth_mib, largest_mib)
    assert all(0 < r["peak_mem_mib"] < 4 * largest_mib + 64 for r in rows)
