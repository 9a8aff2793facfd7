"""`TrainConfig`: the typed, checked settings of a DrQ-v2 / MBPO run (built from the Hydra config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.drqv2 import DrQV2Config
from core.logger import WandbConfig
from mbrl.envs import EnvConfig
from mbrl.run_settings import RunSettings

if TYPE_CHECKING:  # the world-model stack is imported only by runs that use it (mbrl.mbpo)
    from mbrl.mbpo import MBPOConfig

_WORLD_MODELS = ("none", "ivideogpt")


@dataclass(kw_only=True)
class TrainConfig(RunSettings):
    """Everything a DrQ-v2 / MBPO run needs, typed and checked (built from the Hydra config by `from_dict`)."""

    agent: DrQV2Config
    agent_name: str = "drqv2"
    world_model: str = "none"
    mbpo: MBPOConfig | None = None  # the world_model settings when world_model=ivideogpt
    progress_bar: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.env.episode_length <= self.agent.nstep:
            raise ValueError(
                f"env.episode_length={self.env.episode_length} must exceed agent.nstep="
                f"{self.agent.nstep}: n-step returns need that many steps inside an episode"
            )
        if self.replay_capacity <= self.env.episode_length:
            raise ValueError(
                f"replay_capacity={self.replay_capacity} must exceed env.episode_length="
                f"{self.env.episode_length}"
            )
        if self.agent_name != "drqv2":
            raise ValueError(
                f"agent={self.agent_name!r} is not trained by this loop; use agent=drqv2 (or agent=dreamerv3)"
            )
        if self.world_model not in _WORLD_MODELS:
            raise ValueError(f"world_model={self.world_model!r} is not one of {', '.join(_WORLD_MODELS)}")
        if self.world_model == "ivideogpt" and self.mbpo is None:
            from mbrl.mbpo import MBPOConfig

            self.mbpo = MBPOConfig()

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TrainConfig:
        """From the resolved Hydra config (`OmegaConf.to_container(cfg, resolve=True)`)."""
        cfg = dict(cfg)
        agent = dict(cfg.pop("agent"))
        logging = dict(cfg.pop("logging"))
        wandb = logging.pop("wandb")
        cfg.pop("runs_dir", None)
        world_model = dict(cfg.pop("world_model"))
        name = world_model.pop("name")
        if name == "ivideogpt":
            from mbrl.mbpo import MBPOConfig
        try:
            return cls(
                env=EnvConfig(task=cfg["task"], seed=cfg.get("seed", 1), **cfg.pop("env")),
                agent_name=agent.pop("name"),
                agent=DrQV2Config(**agent),
                world_model=name,
                mbpo=MBPOConfig.from_dict(world_model) if name == "ivideogpt" else None,
                wandb=WandbConfig(**wandb),
                **logging,
                **cfg,
            )
        except TypeError as err:  # an unknown or missing key
            raise ValueError(f"bad configuration: {err}") from None
