"""Videos of validation rollouts and imagined experience, with rewards written into the frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.video import VideoRecorder
from mbrl.imagined_replay import Rollouts

VIDEO_FPS = 4  # how fast the videos of imagined experience play

# 3x5 pixel glyphs for reward read-outs drawn into the video frames (no font files or OpenCV needed).
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
}


def draw_text(frame: np.ndarray, text: str) -> np.ndarray:
    """Writes `text` (digits, '.', '-') in white on a black box into the top-left corner of a uint8
    `(3, H, W)` frame (in place; returned for chaining)."""
    width = 4 * len(text) + 1
    frame[:, :7, :width] = 0
    for i, char in enumerate(text):
        glyph = np.array([int(c) for c in _GLYPHS[char]], dtype=bool).reshape(5, 3)
        frame[:, 1:6, 1 + 4 * i:4 + 4 * i][:, glyph] = 255
    return frame


def side_by_side(real: torch.Tensor, imagined: torch.Tensor) -> np.ndarray:
    """Videos `(B, T, 3, H, W)` uint8 -> `(T, 3, B*H, 3*W)`: each row real | imagined | abs error."""
    error = (real.int() - imagined.int()).abs().to(torch.uint8)
    rows = torch.cat([real, imagined, error], dim=-1)  # (B, T, 3, H, 3W)
    return rows.permute(1, 2, 0, 3, 4).flatten(2, 3).cpu().numpy()


def rollout_video(rollouts: Rollouts, history: int) -> np.ndarray:
    """Imagined rollouts -> `(L + H, 3, B*H, W)` uint8, rows = rollouts; each imagined frame shows the
    predicted reward of the transition into it."""
    frames = rollouts.frames.cpu().numpy().copy()  # (B, L + H, 3, H, W)
    rewards = rollouts.rewards.cpu().numpy()
    for b in range(frames.shape[0]):
        for t in range(rollouts.horizon):
            draw_text(frames[b, history + t], f"{rewards[b, t]:.2f}")
    return frames.transpose(1, 2, 0, 3, 4).reshape(frames.shape[1], 3, -1, frames.shape[-1])


def save_video(folder: Path, name: str, fmt: str, frames: np.ndarray) -> Path | None:
    """Writes `(T, 3, H, W)` uint8 frames with `core.video.VideoRecorder`."""
    recorder = VideoRecorder(folder, fmt, fps=VIDEO_FPS)
    recorder.start(frames[0])
    for frame in frames[1:]:
        recorder.add(frame)
    return recorder.save(name)
