"""The run-level settings every training loop shares (DrQ-v2/MBPO's `Trainer`, DreamerV3's sheeprl run)."""
from __future__ import annotations

from dataclasses import dataclass

from core.checkpoint import RESUME_MODES
from core.config import coerce_ints
from core.logger import WandbConfig
from core.runtime import check_malloc
from core.video import VIDEO_FORMATS
from mbrl.envs import EnvConfig

_COUNTS = ("num_train_frames", "eval_every_frames", "num_eval_episodes", "checkpoint_every_frames", "demos")


@dataclass(kw_only=True)
class RunSettings:
    """Task, env, budgets (env frames), evaluation, checkpoints, logging and device, typed and checked.

    Each agent's config subclasses this with its `agent` settings and the checks only it needs.
    """

    task: str
    env: EnvConfig
    wandb: WandbConfig
    seed: int = 1
    device: str = "auto"
    num_threads: int | str = "auto"
    malloc: str = "tuned"  # core.runtime.configure_malloc: tuned | system
    num_train_frames: int = 260_000
    eval_every_frames: int = 10_000
    num_eval_episodes: int = 20
    checkpoint_every_frames: int = 20_000
    save_video: bool = True
    video_format: str = "gif"
    replay_capacity: int = 1_000_000
    demos: int = 0  # scripted episodes put into the real replay before training (mbrl.demos)
    console: bool = True
    resume: str | bool = "auto"  # auto: continue when the run folder holds a checkpoint; True: must; False: never

    def __post_init__(self) -> None:
        coerce_ints(self, ("seed", "replay_capacity", *_COUNTS))
        for name in _COUNTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        check_malloc(self.malloc)
        if self.resume not in RESUME_MODES:
            raise ValueError(f"resume={self.resume!r} must be auto, true or false")
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"video_format={self.video_format!r} must be one of {', '.join(VIDEO_FORMATS)}")
        repeat = self.env.action_repeat
        for name in ("eval_every_frames", "checkpoint_every_frames"):
            if 0 < getattr(self, name) < repeat:
                raise ValueError(f"{name}={getattr(self, name)} is shorter than one agent step ({repeat} frames)")
