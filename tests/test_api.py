"""The public Python API: the README's example runs as written, and the API is what it says."""

from __future__ import annotations

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
