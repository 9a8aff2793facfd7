"""Entry point: `python -m mbrl.train task=door_open [agent=drqv2] [world_model=ivideogpt|none] [key=value ...]`.

Composes the Hydra config (configs/train.yaml), checks it, records it in the run folder and hands it to
`mbrl.trainer.Trainer`. Multirun: `python -m mbrl.train -m task=door_open,drawer_open seed=1,2,3`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from core.logger import save_run_info
from mbrl.envs import resolve_task, short_name  # first: it picks headless rendering before MuJoCo loads
from mbrl.trainer import TrainConfig, Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_dir_for(runs_dir: str, task: str, agent: str, world_model: str, seed: int, resume: object) -> str:
    """`<runs_dir>/<time>_<task>_<agent>_<world_model>_s<seed>`; with resume=true the newest such folder that
    holds a checkpoint, so that the same command continues it."""
    try:
        task = short_name(resolve_task(str(task)))
    except ValueError:
        pass  # the trainer reports the bad name in one line
    name = f"{task}_{agent}_{world_model}_s{seed}"
    if resume is True:
        # the trainer's checkpoint, or the file a DreamerV3 run writes beside sheeprl's
        markers = ("checkpoints/latest.pt", "dreamerv3_resume.json")
        earlier = sorted(
            p for p in Path(runs_dir).glob(f"*_{name}") if any((p / marker).is_file() for marker in markers)
        )
        if earlier:
            return str(earlier[-1])
    return f"{runs_dir}/{datetime.now():%Y-%m-%d_%H-%M-%S}_{name}"


# Cached: Hydra may resolve hydra.run.dir more than once; the timestamp must not change in between.
OmegaConf.register_new_resolver("mbrl_run_dir", run_dir_for, use_cache=True)


def prepare(cfg: DictConfig, run_dir: Path) -> Callable[[], None]:
    """Checks the config and builds the run; returns the function that trains.

    Raises:
        ValueError: a bad setting (the message names it and the fix).
    """
    if cfg.agent.name == "dreamerv3":  # its own loop: sheeprl's DreamerV3 (mbrl/dreamerv3)
        from mbrl.dreamerv3 import RunSpec, run

        RunSpec.from_train_config(cfg)
        return lambda: run(cfg, run_dir)
    record = OmegaConf.to_container(cfg, resolve=True)
    return Trainer(TrainConfig.from_dict(record), run_dir, record).train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train = prepare(cfg, run_dir)
    except (ValueError, ImportError) as err:  # a bad setting or a missing extra: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    save_run_info(run_dir, OmegaConf.to_yaml(cfg, resolve=True), REPO_ROOT)
    train()


def _named(argv: list[str], key: str) -> str | None:
    """The value the command line gives `key` (the last one wins, as in Hydra), or None."""
    values = [arg.split("=", 1)[1] for arg in argv if "=" in arg and arg.split("=", 1)[0].lstrip("+~") == key]
    return values[-1] if values else None


def _default_world_model(argv: list[str]) -> list[str]:
    """`agent=dreamerv3` learns its own world model: it implies `world_model=none` unless the command names one
    (the default, world_model=ivideogpt, is MBPO for DrQ-v2)."""
    if _named(argv, "agent") == "dreamerv3" and _named(argv, "world_model") is None:
        return [*argv, "world_model=none"]
    return argv


def _default_profile(argv: list[str]) -> list[str]:
    """Adds `profile=cpu` when no GPU is present and the command names no profile (README: "Profiles")."""
    if _named(argv, "profile") is not None or torch.cuda.is_available():
        return argv
    print(
        "no GPU found: using profile=cpu (smaller batch, shorter run); pass profile=paper for the paper's "
        "settings",
        file=sys.stderr,
    )
    return [*argv, "profile=cpu"]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_default_profile(_default_world_model(sys.argv[1:]))]
    main()
