"""Checkpoints: atomic writes, round trips of tensors / numpy / RNG states, weights-only loading."""

from __future__ import annotations

import pathlib
import pickle
import random

import numpy as np
import pytest
import torch

from core import checkpoint
from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_keeps_tensors_arrays_and_primitives(tmp_path):
    state = {
        "weights": {"w": torch.randn(3, 4), "step": torch.tensor(5.0)},
        "frames": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "starts": np.array([0, 7], dtype=np.int64),
        "mt": np.random.RandomState(1).get_state(),  # a tuple holding a uint32 array
        "counters": {"step": 12, "episode": 3, "name": "door_open", "ratio": 0.5, "flag": True, "none": None},
        "scalar": np.float32(2.5),
    }
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", state))
    assert torch.equal(loaded["weights"]["w"], state["weights"]["w"])
    assert isinstance(loaded["frames"], np.ndarray) and loaded["frames"].dtype == np.uint8
    np.testing.assert_array_equal(loaded["frames"], state["frames"])
    np.testing.assert_array_equal(loaded["starts"], state["starts"])
    assert loaded["mt"][0] == "MT19937" and loaded["mt"][1].dtype == np.uint32
    np.testing.assert_array_equal(loaded["mt"][1], state["mt"][1])
    assert loaded["counters"] == state["counters"]
    assert loaded["scalar"] == 2.5


def test_rng_state_round_trip_replays_the_same_draws(tmp_path):
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"version": 1})

    def crash(obj, f):
        pathlib.Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left behind


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
