"""Video segments from folders of episode `.npz` files (the official converters' layout).

Each file is one episode: frames uint8 `(T, H, W, 3)` under an image key (`image` by default), optionally
`action` `(T, D)` (`action[t]` taken at frame t), `reward` `(T,)` (of the transition out of frame t) and
`success` `(T,)`. Folders without actions or rewards (action-free pre-training data) load too; the batch
then carries `None` for them. Files written by `mbrl.collect` pad the last row of `action`,
`reward` and `success` with zeros (no step is taken at an episode's final frame).

All episodes are loaded into memory once (uint8, channels first) and sampled with vectorised indexing; this
suits demonstration-scale data (thousands of episodes), not a full Open X-Embodiment mixture: for that,
`world_model.data.lazy.LazyEpisodeDataset` reads episodes on demand (same `sample` API) and
`world_model.data.mixture` mixes such datasets by weight (`load_data` picks one or the other from `data=`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from core.batch import SegmentBatch
from world_model.data.formats import frames_uint8, open_npz

ACTION_KEY = "action"
REWARD_KEY = "reward"


class EpisodeDataset:
    """Segments of `segment_length` consecutive frames from single episodes, uniformly over all windows.

    Args:
        folder: directory searched recursively for `*.npz` episodes.
        segment_length: frames per segment (T).
        image_key: name of the frame array in the files.
        seed: seed of the generator `sample` uses when none is passed.
    """

    def __init__(
        self, folder: str | Path, segment_length: int, image_key: str = "image", seed: int = 0
    ) -> None:
        if segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {segment_length}")
        self.folder = Path(folder)
        self.segment_length = int(segment_length)
        self.rng = np.random.default_rng(seed)
        files = sorted(self.folder.rglob("*.npz"))
        if not files:
            raise ValueError(
                f"no .npz episodes under {self.folder}; record some with "
                f"`python -m mbrl.collect task=door_open episodes=10 out={self.folder}`"
            )

        episodes = [self._load(file, image_key) for file in files]
        lengths = np.array([len(ep["frames"]) for ep in episodes])
        usable = lengths >= self.segment_length
        if not usable.any():
            raise ValueError(
                f"all {len(files)} episodes under {self.folder} are shorter than segment_length="
                f"{self.segment_length} (longest: {lengths.max()} frames); lower segment_length"
            )
        if not usable.all():
            warnings.warn(
                f"skipping {int((~usable).sum())} of {len(files)} episodes under {self.folder}: "
                f"shorter than {self.segment_length} frames",
                stacklevel=2,
            )
        episodes = [ep for ep, ok in zip(episodes, usable, strict=True) if ok]
        shapes = {ep["frames"].shape[1:] for ep in episodes}
        if len(shapes) > 1:
            raise ValueError(
                f"episodes under {self.folder} have different frame shapes {sorted(shapes)}; "
                "resize them to one size"
            )
        self.files = [file for file, ok in zip(files, usable, strict=True) if ok]
        self.frame_shape: tuple[int, int, int] = shapes.pop()

        self._frames = np.concatenate([ep["frames"] for ep in episodes])  # (N, 3, H, W)
        self._actions = self._concat_optional(episodes, ACTION_KEY)
        self._rewards = self._concat_optional(episodes, REWARD_KEY)
        self._lengths = lengths[usable]
        self._offsets = np.concatenate([[0], np.cumsum(self._lengths)[:-1]])
        windows = self._lengths - self.segment_length + 1
        self._window_ends = np.cumsum(windows)  # episode e holds windows [ends[e-1], ends[e])

    @staticmethod
    def _load(file: Path, image_key: str) -> dict[str, np.ndarray]:
        with open_npz(file) as data:
            if image_key not in data.files:
                raise ValueError(
                    f"{file} has no {image_key!r} array (it has {data.files}); pass image_key=..."
                )
            frames = frames_uint8(data[image_key], file, image_key)  # BAIR's int64 frames become uint8
            episode = {"frames": np.ascontiguousarray(frames.transpose(0, 3, 1, 2))}
            for key in (ACTION_KEY, REWARD_KEY):
                if key in data.files:
                    value = data[key].astype(np.float32)
                    if len(value) != len(frames):
                        raise ValueError(
                            f"{file}: {key!r} has {len(value)} rows for {len(frames)} frames; "
                            "the layout needs one row per frame"
                        )
                    episode[key] = value.reshape(len(frames), -1) if key == ACTION_KEY else value.reshape(-1)
        return episode

    @staticmethod
    def _concat_optional(episodes: list[dict], key: str) -> np.ndarray | None:
        present = [key in ep for ep in episodes]
        if not any(present):
            return None
        if not all(present):
            warnings.warn(
                f"only {sum(present)} of {len(episodes)} episodes have {key!r}; ignoring it", stacklevel=3
            )
            return None
        return np.concatenate([ep[key] for ep in episodes])

    def __len__(self) -> int:
        """Number of usable episodes."""
        return len(self._lengths)

    @property
    def num_segments(self) -> int:
        """Number of distinct windows of `segment_length` frames."""
        return int(self._window_ends[-1])

    @property
    def has_actions(self) -> bool:
        return self._actions is not None

    @property
    def action_dim(self) -> int | None:
        return None if self._actions is None else int(self._actions.shape[1])

    def sample(self, batch_size: int, generator: np.random.Generator | None = None) -> SegmentBatch:
        """`batch_size` random segments.

        Returns:
            `SegmentBatch` with frames uint8 `(B, T, 3, H, W)`, actions float32 `(B, T, D)` or None,
            rewards float32 `(B, T)` or None.
        """
        rng = self.rng if generator is None else generator
        window = rng.integers(0, self.num_segments, size=batch_size)
        episode = np.searchsorted(self._window_ends, window, side="right")
        first_window = np.where(episode > 0, self._window_ends[episode - 1], 0)
        start = self._offsets[episode] + window - first_window
        index = start[:, None] + np.arange(self.segment_length)  # (B, T)

        def gather(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.take(array, index, axis=0))

        return SegmentBatch(
            frames=gather(self._frames), actions=gather(self._actions), rewards=gather(self._rewards)
        )
