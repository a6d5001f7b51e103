"""build/source_stamp.py: whether dist/bin is the build of the checkout (`make build` skips a fresh
one; tests/bundle.py errors with "run make build" on a missing or stale one)."""

import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "build" / "source_stamp.py"


@pytest.fixture
def stamp(tmp_path, monkeypatch):
    """build/source_stamp.py with its stamp and executable in tmp_path."""
    spec = importlib.util.spec_from_file_location("source_stamp", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "STAMP", tmp_path / "build" / "work" / "bin.stamp")
    monkeypatch.setattr(module, "EXE", tmp_path / "dist" / "bin" / ".underlay" / "underlay")
    return module


def test_a_missing_build_is_stale_naming_the_executable(stamp):
    assert stamp.stale() == "dist/bin/.underlay/underlay is missing"


def test_a_build_without_its_stamp_is_stale(stamp):
    stamp.EXE.parent.mkdir(parents=True)
    stamp.EXE.write_text("")
    assert stamp.stale() == "build/work/bin.stamp is missing"


def test_a_build_of_other_sources_is_stale_and_of_these_fresh(stamp):
    stamp.EXE.parent.mkdir(parents=True)
    stamp.EXE.write_text("")
    stamp.STAMP.parent.mkdir(parents=True)
    stamp.STAMP.write_text("0" * 64 + "\n")
    assert stamp.stale().startswith("dist/bin is stale")
    stamp.STAMP.write_text(stamp.digest() + "\n")
    assert stamp.stale() is None
