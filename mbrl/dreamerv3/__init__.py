"""DreamerV3 baseline: sheeprl's implementation on our pixel Meta-World env, logged like our agents.

`python -m mbrl.train agent=dreamerv3 task=door_open` calls `run(cfg, run_dir)`. Needs the `baselines` extra
(`pip install -e ".[baselines]"`, sheeprl). What is ours and what is sheeprl's:

- ours: the env (action repeat, success bonus, rendering), the budgets (env frames), the evaluation
  (greedy episodes every `eval_every_frames`), the logging (`core.logger.Logger`: train.csv, eval.csv,
  console, W&B) and the run folder;
- sheeprl's: the DreamerV3 model, replay and training loop (`sheeprl.algos.dreamer_v3`), configured from
  configs/agent/dreamerv3.yaml; its own files go to `<run>/sheeprl/` (resolved config, checkpoints,
  memory-mapped replay).

See mbrl/dreamerv3/session.py for how the two are joined and how `eval/*` is computed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.logger import Logger
from core.runtime import configure_malloc, configure_threads, pick_device
from mbrl.dreamerv3.config import DreamerV3Config, RunSpec, sheeprl_config

__all__ = ["DreamerV3Config", "RunSpec", "run"]


def run(cfg: DictConfig, run_dir: Path) -> None:
    """Trains DreamerV3 as configured by the `mbrl.train` config `cfg`, writing into `run_dir`.

    Raises:
        ValueError: a setting DreamerV3 cannot honour (names it and the fix).
        ImportError: sheeprl is not installed (`pip install -e ".[baselines]"`).
    """
    spec = RunSpec.from_train_config(cfg)
    # Imported here: sheeprl (with Lightning) takes seconds to import, and only DreamerV3 runs need it.
    from sheeprl.cli import check_configs, run_algorithm
    from sheeprl.utils.utils import dotdict

    from mbrl.dreamerv3.session import Session, new_session_id, registered, resume_point

    run_dir = Path(run_dir)
    resume = resume_point(run_dir, spec.resume)
    sheeprl_dir = run_dir / "sheeprl"
    sheeprl_dir.mkdir(parents=True, exist_ok=True)
    num_threads = configure_threads(spec.num_threads)
    configure_malloc(spec.malloc)
    device = pick_device(spec.device)
    session_id = new_session_id()
    composed = sheeprl_config(spec, sheeprl_dir, session_id, device, num_threads)
    sheeprl_cfg = dotdict(OmegaConf.to_container(composed, resolve=True, throw_on_missing=True))
    if resume is not None:
        # sheeprl restores its model, optimizers, replay and counters from its checkpoint
        sheeprl_cfg.checkpoint.resume_from = resume.checkpoint
    check_configs(sheeprl_cfg)

    record = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    frame = None if resume is None else resume.frame(spec.env.action_repeat)
    logger = Logger(run_dir, spec.wandb, config=record, console=spec.console, resume_frame=frame,
                    checkpoint_after_eval=True)
    if resume is not None:
        print(f"resuming DreamerV3 from {resume.checkpoint} at frame {frame} (episode {resume.episode})")
    demos = _demo_replay(spec, sheeprl_cfg) if spec.demos and resume is None else contextlib.nullcontext()
    session = Session(spec, sheeprl_cfg, logger, run_dir, sheeprl_dir, resume)
    try:
        with registered(session_id, session), demos:
            run_algorithm(sheeprl_cfg)
    finally:
        session.close()
        logger.close()


def _demo_replay(spec: RunSpec, sheeprl_cfg: Any) -> contextlib.AbstractContextManager[None]:
    """Plays the run's demonstrations (`mbrl.demos`, on an env of its own: no frames counted) and returns the
    context in which sheeprl builds its replay holding them."""
    from mbrl.demos import demo_episodes, demos_added
    from mbrl.dreamerv3.demos import demo_rows, replay_with_demos
    from mbrl.envs import make_env

    env = make_env(spec.env)
    try:
        episodes = list(demo_episodes(env, spec.task, spec.demos, spec.seed))
    finally:
        env.close()
    print(demos_added(episodes))
    return replay_with_demos([demo_rows(episode, bool(sheeprl_cfg.env.clip_rewards)) for episode in episodes])
