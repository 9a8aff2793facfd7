"""Episode videos (GIF or MP4 through imageio) written into the run folder."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

VIDEO_FORMATS = ("gif", "mp4")


class VideoRecorder:
    """Collects frames of one episode and writes them to `folder/<name>.<fmt>`.

    Frames are `(3, H, W)` uint8 (the env's `info["frame"]` / the newest frame of an observation).
    `enabled=False` makes every call a no-op, so the loop needs no `if save_video` checks.
    """

    def __init__(self, folder: str | Path, fmt: str = "gif", fps: int = 20, enabled: bool = True) -> None:
        if fmt not in VIDEO_FORMATS:
            raise ValueError(f"video format {fmt!r} is not one of {', '.join(VIDEO_FORMATS)}")
        self.folder, self.fmt, self.fps, self.enabled = Path(folder), fmt, fps, enabled
        self._frames: list[np.ndarray] = []
        self._recording = False

    def start(self, frame: np.ndarray, record: bool = True) -> None:
        """Begins an episode with its first frame; `record=False` skips this episode and keeps the frames of
        an earlier recorded episode that was not saved yet (evaluation records its first episode only)."""
        self._recording = self.enabled and record
        if self._recording:
            self._frames = []
            self.add(frame)

    def add(self, frame: np.ndarray) -> None:
        """Appends a frame while an episode started with `record=True` runs and was not saved yet."""
        if self._recording:
            self._frames.append(np.asarray(frame).transpose(1, 2, 0))

    def save(self, name: str) -> Path | None:
        """Writes the recorded episode and returns its path (None when nothing was recorded)."""
        if not self._frames:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.{self.fmt}"
        if self.fmt == "gif":
            # GIF frame durations are in milliseconds (imageio >= 2.28 with Pillow).
            imageio.mimsave(path, self._frames, duration=1000 / self.fps, loop=0)
        else:
            # macro_block_size=1: keep odd sizes such as 84x84 instead of resizing to a multiple of 16.
            imageio.mimsave(path, self._frames, fps=self.fps, macro_block_size=1)
        self._frames, self._recording = [], False
        return path
