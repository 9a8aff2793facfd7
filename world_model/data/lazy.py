"""A dataset over a folder of episode files that reads an episode only when a segment of it is drawn.

Memory holds the sorted file list and a bounded LRU cache of recently read episodes (at most ``cache_episodes``
episodes and ``cache_mb`` MiB of frames, whichever binds first; the newest episode is always kept), so it does
not grow with the number of episodes. Sampling follows the official iVideoGPT pipeline: an episode uniformly,
then a segment of ``segment_length`` frames at the format's stride from a uniform start. An episode shorter than
``stride x segment_length`` frames gets the largest stride that fits (``len // segment_length``, at least 1); one
shorter than the segment even at stride 1 is padded by repeating its last frame (zero actions and rewards there).
Splits: ``held_out`` is every 100th file in sorted order (``i % 100 == 0``), ``train`` the others, ``all`` every
file. For small folders ``world_model.data.dataset.EpisodeDataset`` (everything in memory) samples faster.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from core.batch import SegmentBatch
from world_model.data.augment import Augmentation, prepare_segment
from world_model.data.formats import (
    ACTION_KEY,
    HELD_OUT_EVERY,
    REWARD_KEY,
    DatasetFormat,
    get_format,
    load_episode,
)

SPLITS = ("train", "held_out", "all")
Episode = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # frames (T, H, W, 3), actions, rewards


def list_episodes(folder: Path) -> list[str]:
    """The ``.npz`` files under ``folder`` (recursively) as paths relative to it, in the order of
    ``sorted(folder.rglob("*.npz"))``; plain strings keep the list small for tens of thousands of files."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        rel = os.path.relpath(parent, folder)
        found += [name if rel == "." else os.path.join(rel, name) for name in files if name.endswith(".npz")]
    return sorted(found, key=lambda name: name.split(os.sep))


def split_files(files: list, split: str) -> list:
    """``held_out``: files ``i % 100 == 0`` of the sorted list; ``train``: the rest; ``all``: every file."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if split == "all":
        return list(files)
    keep = (lambda i: i % HELD_OUT_EVERY == 0) if split == "held_out" else (lambda i: i % HELD_OUT_EVERY != 0)
    return [f for i, f in enumerate(files) if keep(i)]


def segment_indices(length: int, segment_length: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices of one segment of an episode of ``length`` frames (see the module docstring).

    Returns:
        int64 (segment_length,); indices past the episode's end are clipped to its last frame (padding).
    """
    if stride * segment_length > length:
        stride = max(length // segment_length, 1)
    start = int(rng.integers(0, max(length - stride * segment_length, 0) + 1))
    index = start + stride * np.arange(segment_length)
    return np.minimum(index, length - 1)


class EpisodeCache:
    """Least-recently-used episodes, bounded by count and by frame bytes (the newest one is always kept)."""

    def __init__(self, max_episodes: int, max_bytes: int) -> None:
        if max_episodes < 1:
            raise ValueError(f"cache_episodes={max_episodes} must be >= 1")
        self.max_episodes, self.max_bytes = max_episodes, max_bytes
        self._items: OrderedDict[int, Episode] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: int) -> Episode | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: int, item: Episode) -> None:
        self._items[key] = item
        self.bytes += sum(a.nbytes for a in item if a is not None)
        while len(self._items) > 1 and (len(self._items) > self.max_episodes or self.bytes > self.max_bytes):
            _, old = self._items.popitem(last=False)
            self.bytes -= sum(a.nbytes for a in old if a is not None)


class LazyEpisodeDataset:
    """Segments of episodes read on demand from one folder of one dataset format.

    Args:
        folder: directory searched recursively for ``*.npz`` episodes.
        fmt: the dataset format (or its registry name): image key, stride, action storage.
        segment_length: frames per segment (T).
        split: ``train`` (every file but each 100th), ``held_out`` (every 100th) or ``all``.
        image_size: output frames are ``image_size x image_size``; None keeps the stored size (then every
            episode must have it).
        augment: per-segment augmentation, or None (centre square crop and resize when the size differs).
        cache_episodes, cache_mb: bounds of the LRU cache of read episodes.
        seed: seed of the generator ``sample`` uses when none is passed.
    """

    def __init__(self, folder: str | Path, fmt: DatasetFormat | str, segment_length: int, split: str = "train",
                 image_size: int | None = None, augment: Augmentation | None = None, cache_episodes: int = 64,
                 cache_mb: float = 512.0, seed: int = 0) -> None:
        if segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {segment_length}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        self.fmt = get_format(fmt) if isinstance(fmt, str) else fmt
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"data folder {self.folder} (dataset {self.fmt.name}) does not exist; "
                                    "pass a folder of episode .npz files")
        everything = list_episodes(self.folder)
        self.names = split_files(everything, split)  # relative to folder
        if not self.names:
            raise ValueError(f"the {split} split of {self.folder} has no episodes ({len(everything)} .npz files); "
                             + ("pass split=all" if everything else "pass a folder of episode .npz files"))
        self.segment_length, self.split = int(segment_length), split
        self.image_size, self.augment = image_size, augment
        self.cache = EpisodeCache(cache_episodes, int(cache_mb * 2**20))
        self.rng = np.random.default_rng(seed)
        self.reads = 0
        frames, actions, rewards = self._episode(0)  # the first file fixes the frame size and the action size
        height, width = frames.shape[1:3] if image_size is None else (image_size, image_size)
        self.frame_shape: tuple[int, int, int] = (3, int(height), int(width))
        self.action_dim: int | None = None if actions is None else int(actions.shape[1])
        self._has_rewards = rewards is not None

    def __len__(self) -> int:
        """Number of episode files in the split."""
        return len(self.names)

    @property
    def files(self) -> list[Path]:
        """The split's episode files."""
        return [self.folder / name for name in self.names]

    @property
    def has_actions(self) -> bool:
        return self.action_dim is not None

    def _episode(self, index: int) -> Episode:
        item = self.cache.get(index)
        if item is None:
            item = load_episode(self.folder / self.names[index], self.fmt)
            self.reads += 1
            self.cache.put(index, item)
        return item

    def segment(self, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
        """One segment: frames uint8 (T, 3, h, w), actions float32 (T, D) or None, rewards float32 (T,) or None."""
        index = int(rng.integers(0, len(self.names)))
        frames, actions, rewards = self._episode(index)
        file = self.folder / self.names[index]
        idx = segment_indices(len(frames), self.segment_length, self.fmt.stride, rng)
        size = None if self.image_size is None else (self.image_size, self.image_size)
        video = prepare_segment(frames[idx], size, self.augment, rng)
        if tuple(video.shape[1:]) != self.frame_shape:
            raise ValueError(f"{file} has {frames.shape[1]}x{frames.shape[2]} frames, not {self.frame_shape[1]}x"
                             f"{self.frame_shape[2]} as the first episode; set image_size")
        pad = np.arange(self.segment_length) >= len(frames)  # repeated last frames: no step taken there

        def aligned(value: np.ndarray | None, what: str, expected: bool) -> np.ndarray | None:
            if value is None:
                if expected:
                    raise ValueError(f"{file} has no {what!r} but the first episode has")
                return None
            out = value[idx].copy()
            out[pad] = 0.0
            return out

        if actions is not None and self.action_dim is not None and actions.shape[1] != self.action_dim:
            raise ValueError(f"{file} has {actions.shape[1]}-d actions, not {self.action_dim}-d as "
                             "the first episode")
        acts = aligned(actions, ACTION_KEY, self.has_actions) if self.has_actions else None
        rews = aligned(rewards, REWARD_KEY, self._has_rewards) if self._has_rewards else None
        return video, acts, rews

    def sample(self, batch_size: int, generator: np.random.Generator | None = None) -> SegmentBatch:
        """``batch_size`` random segments.

        Returns:
            ``SegmentBatch`` with frames uint8 (B, T, 3, h, w), actions float32 (B, T, D) or None, rewards
            float32 (B, T) or None.
        """
        rng = self.rng if generator is None else generator
        return stack_segments([self.segment(rng) for _ in range(batch_size)])


def stack_segments(segments: list[tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]],
                   with_actions: bool = True, with_rewards: bool = True) -> SegmentBatch:
    """Segments of :meth:`LazyEpisodeDataset.segment` -> one ``SegmentBatch`` (actions / rewards kept only when
    asked for and every segment has them)."""
    frames = torch.stack([s[0] for s in segments])

    def optional(i: int, wanted: bool) -> torch.Tensor | None:
        if not wanted or any(s[i] is None for s in segments):
            return None
        return torch.from_numpy(np.stack([s[i] for s in segments]))

    return SegmentBatch(frames=frames, actions=optional(1, with_actions), rewards=optional(2, with_rewards))
