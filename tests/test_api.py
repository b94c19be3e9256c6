"""The public Python API: the README's example runs as written, and the API is what it says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs/api/artifact/manifest.json").is_file()
    assert (tmp_path / "runs/api/search/front.json").is_file()
    assert done.stdout.strip(), "the example prints the generated text"


def docstring_example() -> str:
    """The `::` block of the package's docstring, dedented."""
    import textwrap

    import llamanas_deploy

    block = llamanas_deploy.__doc__.split("::\n", 1)[1].split("\nNames are imported", 1)[0]
    return textwrap.dedent(block)


@pytest.mark.slow
def test_docstring_example_runs_as_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", docstring_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "runs/artifact/manifest.json").read_text())
    subnet_id, decode_ms = done.stdout.split()[:2]
    assert subnet_id == manifest["subnet_id"] and float(decode_ms) > 0


def test_deprecated_stage_names_warn_and_forward():
    import llamanas_deploy as ln

    for old, new in {"profile_target": "profile", "fit_predictor": "fit", "export_artifact": "export",
                     "bench_artifact": "bench", "finetune_supernet": "finetune", "run_loop": "run",
                     "ExportResult": "Artifact"}.items():  # fmt: skip
        with pytest.warns(DeprecationWarning, match=f"use llamanas_deploy.{new}$"):
            assert getattr(ln, old) is getattr(ln, new)


def test_each_stage_takes_out_and_callback_by_keyword_only():
    import inspect

    import llamanas_deploy as ln

    for stage in (ln.profile, ln.export, ln.bench, ln.finetune, ln.run, ln.minimize, ln.fit, ln.evaluate_subnet):
        params = inspect.signature(stage).parameters
        assert params["callback"].kind is inspect.Parameter.KEYWORD_ONLY, stage.__name__
        if "out" in params:
            assert params["out"].kind is inspect.Parameter.KEYWORD_ONLY, stage.__name__


def test_readme_example_is_short():
    lines = [line for line in readme_example().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 16


def test_every_public_name_resolves():
    import llamanas_deploy as ln

    missing = [name for name in ln.__all__ if getattr(ln, name, None) is None]
    assert not missing


def test_import_is_light():
    code = "import sys, llamanas_deploy; print(sorted(m for m in ('torch', 'onnxruntime', 'xgboost', 'pymoo') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_unknown_name_is_an_attribute_error():
    import llamanas_deploy as ln

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ln.nope  # noqa: B018
