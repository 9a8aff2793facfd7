"""Weighted mixtures of lazily read datasets (iVideoGPT's Open X-Embodiment "select" mixture and user-defined
ones), described by plain YAML files such as ``configs/mixtures/oxe_select.yaml``.

A mixture file is a list of datasets, or a mapping with that list under ``datasets`` and options::

    root: data/oxe          # relative dataset paths are under it (itself relative to the working directory)
    image_size: 64          # output frames are image_size x image_size (needed when the datasets' sizes differ)
    augment: true           # random resized crop + colour jitter per segment (false: centre crop and resize)
    split: train            # train (all but every 100th file) | held_out (every 100th) | all
    cache_episodes: 64      # per dataset: most episodes kept in memory (LRU) ...
    cache_mb: 256           # ... and most MiB of frames
    skip_missing: false     # true: leave out datasets whose folder is missing (the rest are re-weighted)
    datasets:
      - {name: bridge, path: bridge, weight: 0.15}   # name: a world_model.data.formats name
      - weight: 0.20                                 # a group: its weight shared equally by its datasets
        datasets: [{name: toto, path: toto}, {name: viola, path: viola}]

Weights are normalised to sum to 1. Drawing a segment: a dataset by weight, then an episode uniformly, then a
start (``world_model.data.lazy``). A mixture has actions only when every dataset has actions of one size;
otherwise it is action-free and says why in ``notes``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.batch import SegmentBatch
from world_model.data.augment import Augmentation
from world_model.data.dataset import EpisodeDataset
from world_model.data.formats import get_format
from world_model.data.lazy import SPLITS, LazyEpisodeDataset, stack_segments

OPTIONS = ("root", "image_size", "augment", "split", "cache_episodes", "cache_mb", "skip_missing", "datasets")
ENTRY_KEYS = ("name", "path", "weight")


class MixtureDataset:
    """Segments drawn from several datasets by weight, with one ``sample`` API.

    Args:
        datasets: the member datasets (same ``segment_length`` and frame size).
        weights: their sampling weights (normalised here; must be positive).
        names: a label per dataset for messages.
        seed: seed of the generator ``sample`` uses when none is passed.
    """

    def __init__(self, datasets: list[LazyEpisodeDataset], weights: list[float], names: list[str],
                 seed: int = 0) -> None:
        if not datasets or len(datasets) != len(weights) or len(names) != len(datasets):
            raise ValueError("a mixture needs at least one dataset and one weight and name per dataset")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"mixture weights must be positive numbers, got {weights}")
        self.datasets, self.names = datasets, names
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.rng = np.random.default_rng(seed)
        self.notes: list[str] = []
        shapes = {name: d.frame_shape for name, d in zip(names, datasets, strict=True)}
        if len(set(shapes.values())) > 1:
            sizes = ", ".join(f"{n} {s[1]}x{s[2]}" for n, s in shapes.items())
            raise ValueError(f"the mixture's datasets give frames of different sizes ({sizes}); set image_size: N")
        self.frame_shape: tuple[int, int, int] = datasets[0].frame_shape
        dims = [d.action_dim for d in datasets]
        self.action_dim: int | None = dims[0] if dims[0] is not None and len(set(dims)) == 1 else None
        if self.action_dim is None and any(d is not None for d in dims):
            sizes = ", ".join(f"{n} {'none' if d is None else f'{d}-d'}" for n, d in zip(names, dims, strict=True))
            self.notes.append(f"the mixture is action-free: its datasets' actions differ ({sizes})")
        self._rewards = all(d._has_rewards for d in datasets)

    def __len__(self) -> int:
        """Episodes over all datasets."""
        return sum(len(d) for d in self.datasets)

    @property
    def has_actions(self) -> bool:
        return self.action_dim is not None

    def sample(self, batch_size: int, generator: np.random.Generator | None = None) -> SegmentBatch:
        """``batch_size`` segments, each from a dataset drawn by weight.

        Returns:
            ``SegmentBatch`` with frames uint8 (B, T, 3, H, W), actions float32 (B, T, D) or None (action-free
            mixture), rewards float32 (B, T) or None.
        """
        rng = self.rng if generator is None else generator
        which = rng.choice(len(self.datasets), size=batch_size, p=self.weights)
        return stack_segments([self.datasets[i].segment(rng) for i in which], self.has_actions, self._rewards)

    def describe(self) -> str:
        """One line: the datasets, their weights and episode counts."""
        parts = [f"{n} {w:.3f} ({len(d)} ep.)" for n, w, d in zip(self.names, self.weights, self.datasets,
                                                                   strict=True)]
        return f"mixture of {len(self.datasets)} datasets: " + ", ".join(parts)

    @classmethod
    def from_yaml(cls, path: str | Path, segment_length: int, seed: int = 0, split: str | None = None
                  ) -> MixtureDataset:
        """Build a mixture from a YAML file (module docstring); ``split`` overrides the file's."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mixture file {path} does not exist; pass data=<mixture .yaml> or a folder")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML ({' '.join(str(err).split())})") from None
        return cls.from_spec(spec, segment_length, seed=seed, split=split, where=str(path))

    @classmethod
    def from_spec(cls, spec: Any, segment_length: int, seed: int = 0, split: str | None = None,
                  where: str = "mixture") -> MixtureDataset:
        """Build a mixture from the parsed YAML (a list of datasets or a mapping with options)."""
        if isinstance(spec, list):
            spec = {"datasets": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list) or not spec["datasets"]:
            raise ValueError(f"{where}: expected a list of {{name, path, weight}} datasets or a mapping with "
                             "`datasets:`")
        unknown = sorted(set(spec) - set(OPTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        split = split or spec.get("split", "train")
        if split not in SPLITS:
            raise ValueError(f"{where}: split={split!r} must be one of {', '.join(SPLITS)}")
        root = Path(spec["root"]) if spec.get("root") else None
        size = spec.get("image_size")
        augment = Augmentation() if spec.get("augment", False) else None
        options = {"split": split, "image_size": None if size is None else int(size), "augment": augment,
                   "cache_episodes": int(spec.get("cache_episodes", 64)), "cache_mb": float(spec.get("cache_mb", 256))}
        entries = _flatten(spec["datasets"], where)
        datasets, weights, names, skipped = [], [], [], []
        for i, (name, folder, weight) in enumerate(entries):
            get_format(name)  # an unknown format: one line with close matches
            folder = root / folder if root is not None and not folder.is_absolute() else folder
            if not folder.is_dir():
                if spec.get("skip_missing", False):
                    skipped.append(name)
                    continue
                raise FileNotFoundError(f"{where}: the folder {folder} of dataset {name} does not exist; fix its "
                                        "path (or root:), or set skip_missing: true")
            datasets.append(LazyEpisodeDataset(folder, name, segment_length, seed=seed + i, **options))
            weights.append(weight)
            names.append(name)
        if not datasets:
            raise FileNotFoundError(f"{where}: none of the {len(entries)} dataset folders exists; fix root: or the "
                                    "paths")
        mixture = cls(datasets, weights, names, seed=seed)
        if skipped:
            mixture.notes.append(f"skipped {len(skipped)} datasets without a folder: {', '.join(skipped)}")
        return mixture


def _flatten(items: list[Any], where: str) -> list[tuple[str, Path, float]]:
    """Entries and groups -> (format name, folder, weight); a group's weight is shared by its datasets."""
    out = []
    for item in items:
        if not isinstance(item, dict):
            bad = f"{where}: each dataset must be a mapping {{name, path, weight}}, got {item!r}"
            raise ValueError(bad)  # noqa: TRY004 (a config error: one line, as the others)
        if "datasets" in item:
            members = item["datasets"]
            if set(item) - {"datasets", "weight"} or not isinstance(members, list) or not members:
                raise ValueError(f"{where}: a group is {{weight: w, datasets: [{{name, path}}, ...]}}, got {item!r}")
            share = _weight(item, where) / len(members)
            out += [(n, p, share) for n, p, _ in _flatten([{**m, "weight": 1.0} for m in members], where)]
            continue
        missing = [k for k in ENTRY_KEYS if k not in item]
        extra = sorted(set(item) - set(ENTRY_KEYS))
        if missing or extra:
            raise ValueError(f"{where}: dataset entry {item!r} needs exactly name, path and weight "
                             f"({'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(extra)})")
        out.append((str(item["name"]), Path(str(item["path"])), _weight(item, where)))
    return out


def _weight(item: dict, where: str) -> float:
    try:
        weight = float(item["weight"])
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"{where}: weight of {item!r} must be a positive number") from None
    if not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"{where}: weight of {item!r} must be a positive number")
    return weight


def load_data(data: str | Path, segment_length: int, image_key: str = "image", seed: int = 0,
              split: str | None = None) -> EpisodeDataset | MixtureDataset:
    """The training data of ``data=``: a ``.yaml`` / ``.yml`` mixture file (read lazily, ``split`` overriding the
    file's), or a folder of episodes (loaded into memory by ``EpisodeDataset``, every file used)."""
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        return MixtureDataset.from_yaml(path, segment_length, seed=seed, split=split)
    return EpisodeDataset(path, segment_length, image_key=image_key, seed=seed)  # names a missing folder itself
