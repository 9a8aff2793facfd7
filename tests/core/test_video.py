import imageio.v2 as imageio
import numpy as np

from core.video import VideoRecorder


def _frame(value: int) -> np.ndarray:
    return np.full((3, 8, 8), value, dtype=np.uint8)


def test_unrecorded_episode_keeps_the_recorded_one(tmp_path):
    """Evaluation records its first episode only: later `record=False` episodes must not wipe it."""
    video = VideoRecorder(tmp_path, "gif")
    video.start(_frame(0), record=True)
    for value in (40, 80):
        video.add(_frame(value))
    video.start(_frame(200), record=False)
    video.add(_frame(250))
    path = video.save("eval")
    assert path is not None
    frames = imageio.mimread(path)
    assert [int(f.mean()) for f in frames] == [0, 40, 80]
    assert video.save("again") is None  # saved once, then empty


def test_disabled_recorder_writes_nothing(tmp_path):
    video = VideoRecorder(tmp_path, "gif", enabled=False)
    video.start(_frame(0))
    video.add(_frame(1))
    assert video.save("eval") is None
    assert not any(tmp_path.iterdir())
