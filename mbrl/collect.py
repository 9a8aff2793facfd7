"""Record scripted-policy Meta-World episodes as world-model training data.

    python -m mbrl.collect task=door_open episodes=50 out=data/door_open [noise=0.1] [seed=0]

Any `CollectConfig` field can be set as `key=value`. The episodes come from the same pixel env (action
repeat, camera, flip, render quality) as training: one frame per agent step. Each episode is one compressed
`.npz` in the layout the official iVideoGPT dataset converters write (one `np.savez_compressed` file per
episode, frames under `image`), with rows aligned to frames:

| key       | shape           | dtype   | row t                                                     |
|-----------|-----------------|---------|-----------------------------------------------------------|
| `image`   | `(T+1, H, W, 3)`| uint8   | frame t (t = 0 is the reset frame)                        |
| `action`  | `(T+1, D)`      | float32 | action taken at frame t (after noise and clipping)        |
| `reward`  | `(T+1,)`        | float32 | reward of the step out of frame t (success bonus included)|
| `success` | `(T+1,)`        | bool    | success during the step out of frame t                    |

The last row of `action`, `reward` and `success` is zero padding: no step is taken at the final frame.
`world_model.data.dataset.EpisodeDataset` reads these folders.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

import numpy as np
from tqdm import tqdm

from mbrl.demos import scripted_episode
from mbrl.envs import EnvConfig, make_env, resolve_task, scripted_policy, short_name


@dataclass
class CollectConfig:
    """What to record (defaults: the paper's env protocol, noise-free expert)."""

    out: str = ""  # output folder (required)
    task: str = "door_open"
    episodes: int = 10
    noise: float = 0.0  # std of Gaussian noise added to the scripted action before clipping
    seed: int = 0  # seeds the initial positions and the action noise
    image_size: int = 64
    camera: str = "corner"
    action_repeat: int = 2
    episode_length: int = 100  # agent steps
    success_bonus: float = 10.0
    render_quality: str = "fast"

    def env_config(self) -> EnvConfig:
        return EnvConfig(
            task=self.task,
            seed=self.seed,
            image_size=self.image_size,
            camera=self.camera,
            action_repeat=self.action_repeat,
            episode_length=self.episode_length,
            success_bonus=self.success_bonus,
            render_quality=self.render_quality,
        )


def parse_args(argv: list[str]) -> CollectConfig:
    """`["task=door_open", "episodes=5", ...]` -> `CollectConfig` (values converted to the field types)."""
    types = get_type_hints(CollectConfig)
    values: dict[str, object] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-")
        if not sep or key not in types:
            raise ValueError(f"expected key=value with key in {sorted(types)}, got {arg!r}")
        try:
            values[key] = types[key](value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a valid {types[key].__name__}") from None
    cfg = CollectConfig(**values)
    if not cfg.out:
        raise ValueError("missing out=FOLDER (where the episode .npz files go)")
    if cfg.episodes < 1 or cfg.noise < 0:
        raise ValueError(f"need episodes >= 1 and noise >= 0, got episodes={cfg.episodes}, noise={cfg.noise}")
    return cfg


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Written to memory then renamed into place, so an interrupted run leaves no truncated episode behind.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def collect(cfg: CollectConfig) -> list[Path]:
    """Record `cfg.episodes` episodes into `cfg.out`; returns the written files."""
    out = Path(cfg.out)
    if out.exists() and any(out.glob("*.npz")):
        raise ValueError(f"{out} already holds episodes; pass a new out= folder (or delete its .npz files)")
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg.env_config())
    policy = scripted_policy(cfg.task)
    noise_rng = np.random.default_rng(cfg.seed)
    name = short_name(resolve_task(cfg.task))
    files, successes = [], 0
    try:
        progress = tqdm(range(cfg.episodes), desc=f"collect {name}", unit="episode")
        for index in progress:
            episode = scripted_episode(env, policy, noise=cfg.noise, rng=noise_rng)
            path = out / f"{name}_{index:06d}_{len(episode.actions)}.npz"
            # no step leaves the final frame: its action, reward and success rows are zero padding
            _save_npz(
                path,
                {
                    "image": episode.frames.transpose(0, 2, 3, 1),
                    "action": np.concatenate([episode.actions, np.zeros((1, env.action_dim), np.float32)]),
                    "reward": np.concatenate([episode.rewards, np.zeros(1, np.float32)]),
                    "success": np.concatenate([episode.successes, [False]]),
                },
            )
            files.append(path)
            successes += episode.success
            progress.set_postfix(success_rate=f"{successes / (index + 1):.2f}")
    finally:
        env.close()
    return files


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI entry: parse `key=value` arguments, record, print a summary."""
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    files = collect(cfg)
    fields = ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))
    print(f"wrote {len(files)} episodes to {cfg.out} ({fields})")
    return files


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
