"""Entry point: `python -m mbrl.train task=door_open [agent=drqv2] [world_model=ivideogpt|none] [key=value ...]`.

Composes the Hydra config (configs/train.yaml), checks it, records it in the run folder and hands it to
`mbrl.trainer.Trainer`. Multirun: `python -m mbrl.train -m task=door_open,drawer_open seed=1,2,3`.

Machine-dependent defaults come from Hydra itself, so every Hydra flag (`--cfg job`, `--help`, `-m`, ...)
works in any position: the default `profile=auto` is registered here at import in Hydra's ConfigStore as the
`cpu` profile without CUDA and the `paper` profile with it (a run prints which); `agent=dreamerv3` selects
`world_model=none` unless the command names one (configs/agent/dreamerv3.yaml).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from core.logger import save_run_info
from mbrl.envs import resolve_task, short_name  # first: it picks headless rendering before MuJoCo loads
from mbrl.train_config import TrainConfig
from mbrl.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
# Config groups whose entries are named <name>_<profile> (in train.yaml: `${agent}_${profile}`).
PROFILE_GROUPS = ("agent_profile", "world_model_profile")


def machine_profile(cuda: bool) -> str:
    """The profile that `profile=auto` (the default) stands for: `paper` with CUDA, `cpu` without."""
    return "paper" if cuda else "cpu"


def register_auto_profile(cuda: bool, config_dir: Path = CONFIG_DIR) -> str:
    """Registers `profile=auto` in Hydra's ConfigStore as a copy of `profile/<machine_profile(cuda)>.yaml`,
    and in each of PROFILE_GROUPS `<name>_auto` for every `<name>_<profile>.yaml` there: the picked profile's
    file, or nothing where that profile has none. The composed config then holds the picked profile's values,
    and `${agent}_${profile}` in train.yaml's defaults list finds its `_auto` entry. Returns the profile."""
    picked = machine_profile(cuda)
    store = ConfigStore.instance()
    content = OmegaConf.load(config_dir / "profile" / f"{picked}.yaml")
    store.store(group="profile", name="auto", node=content, package="_global_")  # as in the profile files
    profiles = {path.stem for path in (config_dir / "profile").glob("*.yaml")}
    for group in PROFILE_GROUPS:
        for path in sorted((config_dir / group).glob("*.yaml")):
            name, _, profile = path.stem.rpartition("_")
            if profile in profiles:
                source = config_dir / group / f"{name}_{picked}.yaml"
                store.store(group=group, name=f"{name}_auto",
                            node=OmegaConf.load(source) if source.is_file() else OmegaConf.create())
    return picked


AUTO_PROFILE = register_auto_profile(torch.cuda.is_available())


def profile_note(choice: str | None, picked: str = AUTO_PROFILE) -> str | None:
    """The line a run prints when the profile was picked for it (`choice` is Hydra's choice for `profile`)."""
    if choice != "auto":
        return None
    if picked == "cpu":
        return ("no GPU found: using profile=cpu (smaller batch, shorter run); pass profile=paper for the "
                "paper's settings")
    return "GPU found: using profile=paper (the paper's settings); pass profile=cpu for a shorter run"


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
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    note = profile_note(hydra_config.runtime.choices.get("profile"))
    if note:
        print(note, file=sys.stderr)
    try:
        train = prepare(cfg, run_dir)
    except (ValueError, FileNotFoundError, ImportError) as err:  # a bad setting, file or extra: one line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    save_run_info(run_dir, OmegaConf.to_yaml(cfg, resolve=True), REPO_ROOT)
    train()


if __name__ == "__main__":
    main()
