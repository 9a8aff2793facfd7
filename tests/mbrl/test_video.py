"""Episode videos: GIF and MP4 files readable back with the recorded frame count."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest

from mbrl.video import VideoRecorder


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_recorder_writes_readable_video(tmp_path, fmt):
    rec = VideoRecorder(tmp_path, fmt=fmt, fps=10)
    frames = [np.full((3, 24, 24), 20 * i, dtype=np.uint8) for i in range(6)]
    rec.start(frames[0])
    for frame in frames[1:]:
        rec.add(frame)
    path = rec.save("episode")
    assert path == tmp_path / f"episode.{fmt}"
    video = imageio.mimread(path)
    assert len(video) == len(frames) and video[0].shape[:2] == (24, 24)


def test_disabled_or_skipped_episodes_write_nothing(tmp_path):
    frame = np.zeros((3, 8, 8), np.uint8)
    off = VideoRecorder(tmp_path, enabled=False)
    off.start(frame)
    assert off.save("a") is None
    rec = VideoRecorder(tmp_path)
    rec.start(frame, record=False)
    rec.add(frame)
    assert rec.save("b") is None
    assert not list(tmp_path.iterdir())
