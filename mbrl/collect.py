"""Record scripted-policy Meta-World episodes as world-model training data, for one task or many.

    python -m mbrl.collect task=door_open episodes=50 out=data/door_open [noise=0.1] [seed=0]
    python -m mbrl.collect tasks=all episodes=20 noise=0.1 workers=2 out=data/metaworld50

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

`task=` writes into `out` itself; `tasks=a,b,...` (or `all`, the 50 tasks) writes one sub-folder per task.
Episode i of a task is reset and perturbed from seeds derived from (`seed`, the task, i) alone, so the data do
not depend on `workers` or on interruptions: `workers=N` records in N spawned processes (a GL context and
`fork` do not mix), and the same command run again into the same `out` records only the missing episodes
(`collect.json` in `out` records the settings; other settings into the same folder are refused).
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.config import parse_key_values
from core.io import atomic_write
from core.runtime import derive_seed
from mbrl.demos import scripted_episode
from mbrl.envs import TASKS, EnvConfig, make_env, resolve_task, scripted_policy, short_name

#: Seed stream of recorded episodes (training episodes use 0, evaluation 1, demos 2, the replay 3, planning 4).
COLLECT_SEED_STREAM = 5
SETTINGS_FILE = "collect.json"
#: Episodes per job handed to a worker process (one env per job).
JOB_EPISODES = 5


@dataclass
class CollectConfig:
    """What to record (defaults: the paper's env protocol, noise-free expert)."""

    out: str = ""  # output folder (required)
    task: str = "door_open"
    tasks: str = ""  # comma-separated tasks, or all (the 50): one sub-folder each; overrides task
    episodes: int = 10  # per task
    noise: float = 0.0  # std of Gaussian noise added to the scripted action before clipping
    seed: int = 0  # seeds the initial positions and the action noise
    workers: int = 1  # processes recording in parallel (spawned)
    image_size: int = 64
    camera: str = "corner"
    action_repeat: int = 2
    episode_length: int = 100  # agent steps
    success_bonus: float = 10.0
    render_quality: str = "fast"

    def task_list(self) -> list[str]:
        """The short names of the tasks to record (a bad name: one line with the close matches)."""
        if not self.tasks:
            return [short_name(resolve_task(self.task))]
        names = list(TASKS) if self.tasks == "all" else [t for t in self.tasks.split(",") if t]
        return list(dict.fromkeys(short_name(resolve_task(t)) for t in names))

    def folder(self, task: str) -> Path:
        """Where `task`'s episodes go: `out` itself for `task=`, `out/<task>` for `tasks=`."""
        return Path(self.out) / task if self.tasks else Path(self.out)

    def env_config(self, task: str | None = None) -> EnvConfig:
        """The recording env: the settings this config shares with `EnvConfig`, for `task` (default `task`)."""
        shared = {f.name for f in dataclasses.fields(EnvConfig)} & {f.name for f in dataclasses.fields(self)}
        return EnvConfig(**{**{name: getattr(self, name) for name in shared}, "task": task or self.task})

    def recorded_settings(self) -> dict[str, object]:
        """The settings that determine the data (not `out`, `episodes` or `workers`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "episodes", "workers")}


def parse_args(argv: list[str]) -> CollectConfig:
    """`["task=door_open", "episodes=5", ...]` -> `CollectConfig` (values converted to the field types)."""
    values = parse_key_values(CollectConfig, argv)
    cfg = CollectConfig(**values)
    if not cfg.out:
        raise ValueError("missing out=FOLDER (where the episode .npz files go)")
    if cfg.episodes < 1 or cfg.noise < 0 or cfg.workers < 1:
        raise ValueError(f"need episodes >= 1, noise >= 0 and workers >= 1, got episodes={cfg.episodes}, "
                         f"noise={cfg.noise}, workers={cfg.workers}")
    return cfg


def episode_seed(cfg: CollectConfig, task: str, index: int) -> int:
    """The reset seed of episode `index` of `task` (its noise generator is seeded from it too)."""
    return derive_seed(cfg.seed, COLLECT_SEED_STREAM, zlib.crc32(task.encode()), index)


def episode_path(folder: Path, task: str, index: int) -> Path | None:
    """The file of episode `index` of `task` in `folder`, if it was recorded."""
    found = sorted(folder.glob(f"{task}_{index:06d}_*.npz"))
    return found[0] if found else None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def record(cfg: CollectConfig, task: str, indices: list[int]) -> list[tuple[str, bool]]:
    """Records episodes `indices` of `task` into its folder; returns (file, success) per episode. Runs in a
    worker process when `workers` > 1 (everything it needs travels in its arguments)."""
    env = make_env(cfg.env_config(task))
    policy = scripted_policy(task)
    written = []
    try:
        for index in indices:
            seed = episode_seed(cfg, task, index)
            episode = scripted_episode(env, policy, seed=seed, noise=cfg.noise, rng=np.random.default_rng(seed))
            path = cfg.folder(task) / f"{task}_{index:06d}_{len(episode.actions)}.npz"
            # no step leaves the final frame: its action, reward and success rows are zero padding
            _save_npz(path, {
                "image": episode.frames.transpose(0, 2, 3, 1),
                "action": np.concatenate([episode.actions, np.zeros((1, env.action_dim), np.float32)]),
                "reward": np.concatenate([episode.rewards, np.zeros(1, np.float32)]),
                "success": np.concatenate([episode.successes, [False]]),
            })
            written.append((str(path), episode.success))
    finally:
        env.close()
    return written


def _check_settings(cfg: CollectConfig) -> None:
    """Refuses a folder recorded with other settings; records this run's settings in a new one."""
    out = Path(cfg.out)
    settings = out / SETTINGS_FILE
    wanted = cfg.recorded_settings()
    if settings.is_file():
        earlier = json.loads(settings.read_text())
        if earlier != wanted:
            changed = sorted(k for k in set(earlier) | set(wanted) if earlier.get(k) != wanted.get(k))
            raise ValueError(f"{out} already holds episodes recorded with other settings ({', '.join(changed)}); "
                             "pass a new out= folder or the same settings to add the missing episodes")
    elif any(out.rglob("*.npz")):
        raise ValueError(f"{out} already holds episodes of unknown settings; pass a new out= folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(settings, lambda tmp: Path(tmp).write_text(json.dumps(wanted, indent=1)))


def collect(cfg: CollectConfig) -> list[Path]:
    """Records the missing episodes of every task into `cfg.out` (in `cfg.workers` processes); returns the
    files of all `episodes` episodes of every task, recorded now or before."""
    tasks = cfg.task_list()
    _check_settings(cfg)
    jobs = []
    for task in tasks:
        cfg.folder(task).mkdir(parents=True, exist_ok=True)
        missing = [i for i in range(cfg.episodes) if episode_path(cfg.folder(task), task, i) is None]
        jobs += [(task, missing[k:k + JOB_EPISODES]) for k in range(0, len(missing), JOB_EPISODES)]
    total = sum(len(indices) for _, indices in jobs)
    done = cfg.episodes * len(tasks) - total
    label = tasks[0] if len(tasks) == 1 else f"{len(tasks)} tasks"
    if done:
        tqdm.write(f"{cfg.out}: {done} episodes already recorded, {total} to go")
    successes = 0
    with tqdm(total=total, desc=f"collect {label}", unit="episode", disable=None) as bar:
        def finished(results: list[tuple[str, bool]]) -> None:
            nonlocal successes
            successes += sum(success for _, success in results)
            bar.update(len(results))
            bar.set_postfix(success_rate=f"{successes / max(bar.n, 1):.2f}")

        if cfg.workers == 1:
            for task, indices in jobs:
                finished(record(cfg, task, indices))
        elif jobs:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=context) as pool:
                for future in as_completed([pool.submit(record, cfg, task, indices) for task, indices in jobs]):
                    finished(future.result())
    return [episode_path(cfg.folder(task), task, i) for task in tasks for i in range(cfg.episodes)]


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI entry: parse `key=value` arguments, record, print a summary."""
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    files = collect(cfg)
    fields = ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} episodes ({size:.1f} MiB) in {cfg.out} ({fields})")
    return files


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
