"""Typed settings of a DreamerV3 run and the sheeprl config built from them.

`RunSpec.from_train_config` reads the resolved config of `python -m mbrl.train agent=dreamerv3 ...`
(configs/train.yaml + configs/agent/dreamerv3.yaml); `sheeprl_config` composes sheeprl's own Hydra config
(`exp=dreamer_v3`, `algo=dreamer_v3_<size>`) and sets every field that our config decides: the env factory,
budgets in agent steps, the replay, the devices, and the hooks that log into our `core.logger.Logger`.

Units: sheeprl counts *policy steps* (agent steps summed over its envs); our budgets are *env frames*
(agent steps x our action repeat). Our env repeats actions itself (one render per agent step), so sheeprl's
own `env.action_repeat` is 1 and env frames = sheeprl policy steps x `env.action_repeat` of our config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from core.logger import WandbConfig
from mbrl.envs import EnvConfig
from mbrl.run_settings import RunSettings

#: Our size names -> sheeprl's algo configs. `tiny` is XS shrunk by `DreamerV3Config.tiny` (tests, smoke runs).
SIZES = {
    "tiny": "dreamer_v3_XS",
    "XS": "dreamer_v3_XS",
    "S": "dreamer_v3_S",
    "M": "dreamer_v3_M",
    "L": "dreamer_v3_L",
    "XL": "dreamer_v3_XL",
}
#: `size: auto`: DreamerV3's dmc_vision size (S) on a GPU; XS on a CPU, where S is several times slower.
AUTO_SIZE = {"cuda": "S", "cpu": "XS"}
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: The observation key of the image (sheeprl's `algo.cnn_keys.encoder`).
OBS_KEY = "rgb"


@dataclass
class DreamerV3Config:
    """configs/agent/dreamerv3.yaml (see the comments there)."""

    name: str = "dreamerv3"
    size: str = "auto"
    num_envs: int = 1
    replay_ratio: float = 0.5
    batch_sequences: int = 16
    sequence_length: int = 64
    learning_starts: int = 1300
    memmap_buffer: bool = True
    precision: str = "auto"
    compile: bool = False
    save_checkpoints: bool = True
    keep_checkpoints: int = 1
    tiny: dict[str, Any] = field(default_factory=dict)
    sheeprl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size != "auto" and self.size not in SIZES:
            raise ValueError(f"agent.size={self.size!r} is not one of auto, {', '.join(SIZES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"agent.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("num_envs", "batch_sequences", "sequence_length", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name}={getattr(self, name)} must be >= 1")
        if self.learning_starts < 0 or self.replay_ratio < 0:
            raise ValueError("agent.learning_starts and agent.replay_ratio must be >= 0")

    def model_size(self, device: torch.device) -> str:
        return AUTO_SIZE[device.type] if self.size == "auto" else self.size

    def fabric_precision(self, device: torch.device) -> str:
        if self.precision != "auto":
            return self.precision
        # bf16 autocast is several times slower than fp32 on CPUs without native bf16.
        return "bf16-mixed" if device.type == "cuda" else "32-true"


@dataclass(kw_only=True)
class RunSpec(RunSettings):
    """What `mbrl.dreamerv3.run` needs from the training config, typed and checked."""

    agent: DreamerV3Config

    def __post_init__(self) -> None:
        super().__post_init__()
        repeat = self.env.action_repeat
        if self.num_train_frames < repeat * self.agent.num_envs:
            raise ValueError(
                f"num_train_frames={self.num_train_frames} is less than one agent step of every env "
                f"({repeat * self.agent.num_envs} frames)"
            )
        size = self.env.image_size
        if size < 8 or size & (size - 1):
            raise ValueError(
                f"env.image_size={size}: DreamerV3's encoder needs a power of two >= 8 (e.g. 64)"
            )
        per_env = min(self.replay_capacity, self.replay_rows) // self.agent.num_envs
        if self.demos and per_env < self.env.episode_length + 1:
            raise ValueError(
                f"the replay of each env ({per_env} steps) cannot hold a demonstration episode of "
                f"{self.env.episode_length + 1} frames: raise replay_capacity"
            )
        if self.replay_capacity < self.agent.sequence_length * self.agent.num_envs:
            raise ValueError(
                f"replay_capacity={self.replay_capacity} cannot hold one sequence of "
                f"agent.sequence_length={self.agent.sequence_length} steps per env"
            )

    @property
    def demo_rows(self) -> int:
        """Replay rows the demonstrations fill: each episode's steps plus its final frame."""
        return self.demos * (self.env.episode_length + 1)

    @property
    def replay_rows(self) -> int:
        """Replay rows of the whole run, summed over the envs: one per agent step, one more per finished
        episode (sheeprl stores its final frame in a row of its own), and the demonstrations'."""
        return self.total_steps + self.total_steps // self.env.episode_length + self.demo_rows

    @property
    def total_steps(self) -> int:
        """Agent steps of the run, summed over the envs (sheeprl's `algo.total_steps`)."""
        return self.num_train_frames // self.env.action_repeat

    @property
    def final_step(self) -> int:
        """The agent step sheeprl actually stops at: it plays whole iterations of one step per env."""
        return self.total_steps // self.agent.num_envs * self.agent.num_envs

    @classmethod
    def from_train_config(cls, cfg: DictConfig | Mapping[str, Any]) -> RunSpec:
        """From the config of `python -m mbrl.train agent=dreamerv3 ...` (resolved or not).

        Raises:
            ValueError: a setting DreamerV3 cannot honour (the message names it and the fix).
            ImportError: sheeprl is not installed.
        """
        if importlib.util.find_spec("sheeprl") is None:
            raise ImportError('agent=dreamerv3 needs sheeprl: pip install -e ".[baselines]"')
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        agent = dict(cfg["agent"])
        unknown = sorted(set(agent) - {f.name for f in dataclasses.fields(DreamerV3Config)})
        if unknown:
            raise ValueError(
                f"agent.{unknown[0]} is not a DreamerV3 setting; configs/agent/dreamerv3.yaml lists them"
            )
        if (cfg.get("world_model") or {}).get("name", "none") != "none":
            raise ValueError("agent=dreamerv3 brings its own world model: use world_model=none")
        logging = dict(cfg.get("logging") or {})
        keys = (
            "device",
            "num_threads",
            "malloc",
            "num_train_frames",
            "eval_every_frames",
            "num_eval_episodes",
            "checkpoint_every_frames",
            "save_video",
            "video_format",
            "replay_capacity",
            "demos",
            "resume",
        )
        return cls(
            task=cfg["task"],
            seed=int(cfg["seed"]),
            env=EnvConfig(task=cfg["task"], seed=int(cfg["seed"]), **cfg["env"]),
            agent=DreamerV3Config(**agent),
            wandb=WandbConfig(**(logging.get("wandb") or {})),
            console=bool(logging.get("console", True)),
            **{k: cfg[k] for k in keys if k in cfg},
        )


def schedule_steps(spec: RunSpec) -> int:
    """sheeprl's `checkpoint.every` in agent steps: the callback that evaluates and checkpoints must run at
    every multiple of both periods, so it runs at their greatest common divisor and decides which is due
    (`mbrl.dreamerv3.session.Session.on_checkpoint`). 0: only at the end of the run."""
    repeat = spec.env.action_repeat
    periods = [p // repeat for p in (spec.eval_every_frames, spec.checkpoint_every_frames) if p > 0]
    return math.gcd(*periods) if periods else 0


@contextmanager
def _own_hydra() -> Iterator[None]:
    """Lets us compose sheeprl's config inside another Hydra app (`mbrl.train`): the outer app's global
    Hydra instance is set aside and put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def sheeprl_config(
    spec: RunSpec, sheeprl_dir: Path, session_id: str, device: torch.device, num_threads: int
) -> DictConfig:
    """sheeprl's DreamerV3 config for `spec`, logging through the session `session_id`.

    Returns the composed config (resolve it with `OmegaConf.to_container(..., resolve=True)`); the user's
    `agent.sheeprl` mapping is merged last, so any sheeprl setting can be changed from our command line.
    """
    from hydra import compose, initialize_config_module

    agent = spec.agent
    size = agent.model_size(device)
    with _own_hydra(), initialize_config_module("sheeprl.configs", version_base="1.3"):
        cfg = compose("config", overrides=["exp=dreamer_v3", f"algo={SIZES[size]}", "env=dummy"])
    env_fields = {k: v for k, v in dataclasses.asdict(spec.env).items() if k != "seed"}
    with open_dict(cfg):
        cfg.seed = spec.seed
        cfg.num_threads = num_threads
        cfg.exp_name = f"dreamerv3_{spec.task}"
        cfg.run_name = sheeprl_dir.parent.name
        cfg.log_root = str(sheeprl_dir.parent)
        cfg.root_dir = sheeprl_dir.name
        cfg.env = OmegaConf.merge(
            cfg.env,
            {
                "id": f"metaworld_{spec.task}",
                "num_envs": agent.num_envs,
                # Our env's processes would hold GL contexts: sheeprl's AsyncVectorEnv forks, which hangs once a
                # GL context exists; the sync one also lets the envs log into the session.
                "sync_env": True,
                "action_repeat": 1,  # ours repeats inside the env, rendering once per agent step
                "screen_size": spec.env.image_size,
                "grayscale": False,
                "clip_rewards": False,
                "capture_video": False,  # our evaluation records its first episode (save_video)
                "max_episode_steps": None,  # our env truncates after env.episode_length agent steps
                "reward_as_observation": False,
            },
        )
        cfg.env.wrapper = {
            "_target_": "mbrl.dreamerv3.session.make_train_env",
            "env": env_fields,
            "seed": None,
            "session": session_id,
        }
        cfg.algo.total_steps = spec.total_steps
        cfg.algo.learning_starts = agent.learning_starts
        cfg.algo.replay_ratio = agent.replay_ratio
        cfg.algo.per_rank_batch_size = agent.batch_sequences
        cfg.algo.per_rank_sequence_length = agent.sequence_length
        cfg.algo.cnn_keys.encoder = [OBS_KEY]
        cfg.algo.mlp_keys.encoder = []
        cfg.algo.run_test = False  # our evaluation replaces sheeprl's single end-of-run test episode
        cfg.algo.compile.enabled = agent.compile
        if size == "tiny":
            cfg.algo = OmegaConf.merge(cfg.algo, agent.tiny)
        # Rows kept; a run never needs more than its own rows (its steps, episode ends and demonstrations).
        cfg.buffer.size = max(min(spec.replay_capacity, spec.replay_rows), agent.sequence_length * agent.num_envs)
        cfg.buffer.memmap = agent.memmap_buffer
        cfg.buffer.checkpoint = agent.save_checkpoints
        cfg.checkpoint.every = schedule_steps(spec)
        cfg.checkpoint.save_last = True  # the final evaluation runs in the same callback
        cfg.checkpoint.keep_last = agent.keep_checkpoints
        cfg.fabric.accelerator = device.type
        cfg.fabric.devices = [device.index] if device.index is not None else 1
        cfg.fabric.precision = agent.fabric_precision(device)
        cfg.fabric.callbacks = [
            {"_target_": "mbrl.dreamerv3.session.SessionCallback", "session": session_id}
        ]
        cfg.metric.log_level = 1
        # sheeprl averages its losses over this many agent steps: about one train episode of every env.
        cfg.metric.log_every = spec.env.episode_length * agent.num_envs
        cfg.metric.logger = {
            "_target_": "mbrl.dreamerv3.session.SessionMetricsLogger",
            "session": session_id,
        }
        cfg.model_manager.disabled = True
    if agent.sheeprl:
        cfg = OmegaConf.merge(cfg, agent.sheeprl)
    return cfg
