"""Profile files: append-only records, torn last line, foreign device, one writer at a time."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from llamanas_deploy.errors import BadInputError
from llamanas_deploy.profiler.fingerprint import fingerprint_id
from llamanas_deploy.profiler.store import (
    FINGERPRINT_FILE,
    MEASUREMENTS_FILE,
    ProfileWriter,
    current_fingerprint,
    read_profile,
)
from llamanas_deploy.subnet_config import SubnetConfig

FIGURE = {"median": 2.0, "iqr": 0.1, "cv": 0.04, "n": 10, "attempts": 1, "flagged": False}


@pytest.fixture(scope="module")
def fingerprint():
    return current_fingerprint()


def record(fingerprint, layers: int, backend: str = "torch", prompt_len: int = 16) -> dict:
    subnet = SubnetConfig(layers, (64,) * layers)
    return {
        "schema_version": 1, "target": "t", "fingerprint_id": fingerprint["fingerprint_id"], "space_id": "s-1",
        "model_id": "m", "subnet": subnet.to_dict(), "subnet_id": subnet.id, "backend": backend,
        "precision": "fp32", "device": "cpu", "threads": 1, "clock": "wall",
        "shapes": {"batch_size": 1, "prompt_len": prompt_len, "context_len": 16, "gen_len": 4},
        "prefill_ms": FIGURE, "decode_ms": FIGURE, "throughput_tok_s": FIGURE | {"median": 500.0},
        "peak_mem_mib": 12.5, "model_bytes": 1000, "flagged": False, "timestamp": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip


def test_records_round_trip_and_filter(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        for layers in (1, 2, 3):
            writer.append(record(fingerprint, layers))
        writer.append(record(fingerprint, 1, backend="other"))
    profile = read_profile(tmp_path)
    assert profile.target == "t" and profile.fingerprint["fingerprint_id"] == fingerprint["fingerprint_id"]
    assert [r.subnet.num_layers for r in profile.records] == [1, 2, 3, 1]
    assert len(profile.filter(backend="torch")) == 3 and len(profile.filter(backend="other", precision="fp32")) == 1
    assert profile.filter(space_id="nope") == []
    assert profile.records[0].value("decode_ms") == 2.0 and profile.records[0].value("throughput") == 500.0
    assert profile.records[0].value("peak_mem") == 12.5


def test_reopening_knows_which_measurements_exist(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1))
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        assert writer.has(record(fingerprint, 1))
        assert not writer.has(record(fingerprint, 2))
        assert not writer.has(record(fingerprint, 1, prompt_len=32))  # other shapes: another measurement
        # another visit of the same sub-network is another measurement; a record without one is visit 0
        assert writer.has(record(fingerprint, 1) | {"visit": 0})
        assert not writer.has(record(fingerprint, 1) | {"visit": 1})


def test_kept_figure_is_the_fast_end_when_recorded(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1) | {"decode_ms": FIGURE | {"best": 1.5}})
    (kept,) = read_profile(tmp_path).records
    assert kept.value("decode_ms") == 1.5 and kept.value("prefill_ms") == 2.0  # older records: the median


def test_torn_last_line_is_dropped_by_readers_and_cut_by_the_writer(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1))
    path = tmp_path / MEASUREMENTS_FILE
    whole = path.read_bytes()
    torn = json.dumps(record(fingerprint, 2)).encode()[:57]
    path.write_bytes(whole + torn)
    assert len(read_profile(tmp_path).records) == 1
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        assert writer.dropped_bytes == len(torn)
        writer.append(record(fingerprint, 3))
    assert path.read_bytes().startswith(whole)
    assert [r.subnet.num_layers for r in read_profile(tmp_path).records] == [1, 3]


def test_corrupt_record_in_the_middle_is_named_by_line(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1))
    path = tmp_path / MEASUREMENTS_FILE
    path.write_text(path.read_text() + "{not json\n" + json.dumps(record(fingerprint, 2)) + "\n")
    with pytest.raises(BadInputError, match=f"{MEASUREMENTS_FILE}:2: not valid JSON"):
        read_profile(tmp_path)


def test_record_from_another_device_is_refused_when_read(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1) | {"fingerprint_id": "0" * 16})
    with pytest.raises(BadInputError, match=":1: record measured on device 0000000000000000"):
        read_profile(tmp_path)


def test_profile_of_another_device_is_never_appended_to(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:
        writer.append(record(fingerprint, 1))
    stored = json.loads((tmp_path / FINGERPRINT_FILE).read_text())
    other = {"fingerprint_id": "f" * 16, "device": stored["device"] | {"cpu_model": "Some Other CPU"}}
    before = (tmp_path / MEASUREMENTS_FILE).read_bytes()
    with pytest.raises(BadInputError, match="measured on another device.*cpu_model"):
        ProfileWriter.open(tmp_path, "t", other)
    assert (tmp_path / MEASUREMENTS_FILE).read_bytes() == before


def test_a_profile_refused_before_its_first_record_leaves_nothing(tmp_path, fingerprint):
    """Say, the first sub-network does not fit in memory: no new `fingerprint.json`, no new directory."""
    new = tmp_path / "a" / "new-target"
    with pytest.raises(MemoryError):
        with ProfileWriter.open(new, "t", fingerprint):
            raise MemoryError("the sub-network does not fit")
    assert not (tmp_path / "a").exists()
    with ProfileWriter.open(tmp_path, "t", fingerprint) as writer:  # an existing profile keeps its fingerprint
        writer.append(record(fingerprint, 1))
    with pytest.raises(MemoryError):
        with ProfileWriter.open(tmp_path, "t", fingerprint):
            raise MemoryError("the next one does not fit")
    assert (tmp_path / FINGERPRINT_FILE).is_file() and len(read_profile(tmp_path).records) == 1


def test_one_writer_at_a_time(tmp_path, fingerprint):
    with ProfileWriter.open(tmp_path, "t", fingerprint):
        with pytest.raises(BadInputError, match="another process is writing"):
            ProfileWriter.open(tmp_path, "t", fingerprint)
    ProfileWriter.open(tmp_path, "t", fingerprint).close()


def test_directory_of_another_target_is_refused(tmp_path, fingerprint):
    ProfileWriter.open(tmp_path, "t", fingerprint).close()
    with pytest.raises(BadInputError, match="holds target 't', not 'u'"):
        ProfileWriter.open(tmp_path, "u", fingerprint)


def test_missing_or_broken_fingerprint_is_named(tmp_path):
    with pytest.raises(BadInputError, match=f"{FINGERPRINT_FILE}: missing"):
        read_profile(tmp_path)
    (tmp_path / FINGERPRINT_FILE).write_text("[1, 2]")
    with pytest.raises(BadInputError, match="not a fingerprint file"):
        read_profile(tmp_path)


def test_the_fingerprint_describes_llama_cpp_python_without_hashing_it(fingerprint):
    try:
        installed = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        installed = None
    device = fingerprint["device"]
    assert device["llama_cpp_python"] == installed
    # another llama-cpp-python leaves the id as it was: profiles and predictors taken before it stay this device's
    assert fingerprint_id(device | {"llama_cpp_python": "0.0.1"}) == fingerprint["fingerprint_id"]
