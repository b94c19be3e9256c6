"""A wheel of the working tree, installed in a fresh environment outside the repository, carries what the
toolkit ships: its predictors (listed and loaded by name), its hardware profiles (`llamanas targets`, and
the loop's reuse of a profile measured on this device)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SHIPPED_PREDICTORS = sorted(p.stem for p in (REPO / "predictors").glob("*.json"))
SHIPPED_PROFILES = sorted(p.parent.name for p in (REPO / "hardware_profiles").glob("*/fingerprint.json"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment (torch and the rest from the system) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_working_tree(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], root)
    (wheel,) = (root / "dist").glob("llamanas_deploy-*.whl")
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root / "venv"], root)
    # the system's pip, run by the venv's python, installs into the venv
    _run([root / "venv/bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], root)
    return root / "venv"


def _copy_working_tree(dest: Path) -> Path:
    """The files git sees (tracked or not ignored), symlinks kept: what a checkout builds from, without writing
    `build/` or egg-info into the repository (a stale `build/lib` there would also leak into the wheel)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src = REPO / name
        if os.path.lexists(src):  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


def _run(args: list[str | Path], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def _python(venv: Path, tmp_path: Path, code: str) -> dict:
    return json.loads(_run([venv / "bin/python", "-c", code], tmp_path))


def _inside(path: str, venv: Path) -> bool:
    return Path(path).resolve().is_relative_to(venv.resolve())


def test_installed_wheel_lists_and_loads_the_shipped_predictors(venv, tmp_path):
    got = _python(venv, tmp_path, f"""
import json, llamanas_deploy
from llamanas_deploy.predict import list_latency_predictors, load_latency_predictor
rows = list_latency_predictors()
predictor = load_latency_predictor(rows[0]["name"])
print(json.dumps({{"file": llamanas_deploy.__file__, "names": [r["name"] for r in rows],
                   "paths": [r["path"] for r in rows], "metric": predictor.metadata_["metric"]}}))
""")
    assert _inside(got["file"], venv)
    assert got["names"] == SHIPPED_PREDICTORS
    assert all(_inside(p, venv) for p in got["paths"])
    assert got["metric"] == got["names"][0].rsplit("-", 1)[1]


def test_installed_cli_lists_the_shipped_profiles(venv, tmp_path):
    listed = json.loads(_run([venv / "bin/llamanas", "targets", "--json"], tmp_path))
    assert _inside(listed["dir"], venv)
    assert [t["target"] for t in listed["targets"]] == SHIPPED_PROFILES
    assert all(t["records"] > 0 for t in listed["targets"])


def test_installed_loop_reuses_a_shipped_profile_of_this_device(venv, tmp_path):
    target = "dev-cpu-2c-avx512-amx"  # its torch fp32 records match the run's default settings
    got = _python(venv, tmp_path, f"""
import json
from llamanas_deploy.jsonfiles import read_json
from llamanas_deploy.loop import RunSettings
from llamanas_deploy.profiler import find_matching_profile, fingerprint
from llamanas_deploy.shipped import shipped_profiles_dir
from llamanas_deploy.space import load_space

# this machine passes for the device the shipped profile was measured on
fingerprint.current_fingerprint = lambda: read_json(shipped_profiles_dir() / "{target}" / "fingerprint.json")
found = find_matching_profile(load_space("tiny"), "decode_ms", backend="torch", precision="fp32", device="cpu",
                              threads=1, clock="cpu", min_subnets=RunSettings().min_profile_subnets)
print(json.dumps({{"found": str(found)}}))
""")
    assert Path(got["found"]).name == target and _inside(got["found"], venv)
