"""Entry point: `python -m mbrl.plan task=reach planner=mppi model=oracle objective=goal_image episodes=10`.

Runs model-predictive control episodes in pixel Meta-World (docs/planning.md). Settings: configs/plan.yaml,
changed by `key=value` arguments (`planner=cem` picks a planner, `planner.samples=50` sets one field).
Outputs in `out`: `eval.csv` (one row per episode: success, return, steps, seconds per control step),
`summary.json`, `config.yaml`, `videos/episode_0.gif` and W&B files. Launching the same command again skips the
episodes already in `eval.csv`.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.logger import Logger, WandbConfig, config_changes, read_rows
from core.runtime import Timer, configure_threads, derive_seed, pick_device
from core.video import VideoRecorder
from mbrl.envs import EnvConfig, make_env, resolve_task, short_name  # first: headless rendering
from mbrl.planning.models import OracleModel, PlanningModel, WorldModel
from mbrl.planning.mpc import EpisodeResult, check_horizon, goal_from_scripted, run_episode
from mbrl.planning.objectives import OBJECTIVES, make_objective
from mbrl.planning.planners import PLANNERS, PlannerConfig, close_matches_hint, make_planner

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO_ROOT / "configs" / "plan.yaml"
MODELS = ("oracle", "ivideogpt")
# Seed stream of planning episodes (core.runtime.derive_seed): training uses 0, evaluation 1, demos 2, the
# replay's sampler 3. Episode i resets with derive_seed(seed, PLAN_SEED_STREAM, i); its planner samples with
# derive_seed(seed, PLAN_SEED_STREAM, i, 1) and the world model with (..., i, 2), so a resumed run repeats
# exactly what the uninterrupted run would have done.
PLAN_SEED_STREAM = 4
# `name=value` of these picks an entry: it sets `<name>.name`.
_PICKED_GROUPS = ("planner",)


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def load_config(overrides: list[str], config_file: Path = CONFIG_FILE) -> DictConfig:
    """configs/plan.yaml with `key=value` overrides applied (values parsed as YAML)."""
    cfg = OmegaConf.load(config_file)
    known = _dotted_keys(OmegaConf.to_container(cfg))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("+")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is not key=value; e.g. planner.samples=50")
        if key in _PICKED_GROUPS:
            key = f"{key}.name"
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else f"see {config_file.name}"
            raise ValueError(f"unknown setting {key!r} ({hint})")
        value = yaml.safe_load(text) if text else None
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def default_out(cfg: DictConfig) -> Path:
    """`runs/plan/<task>_<planner>_<model>_<objective>_s<seed>`: the same command finds the same folder."""
    task = short_name(resolve_task(str(cfg.task)))
    return Path("runs") / "plan" / f"{task}_{cfg.planner.name}_{cfg.model}_{cfg.objective}_s{cfg.seed}"


def check_names(cfg: DictConfig) -> None:
    """One-line errors for unknown planner, model and objective names, before anything is built."""
    for what, name, choices in (("planner", cfg.planner.name, PLANNERS), ("model", cfg.model, MODELS),
                                ("objective", cfg.objective, OBJECTIVES)):
        if name not in choices:
            raise ValueError(f"unknown {what} {name!r} ({close_matches_hint(str(name), list(choices))}); "
                             f"choose one of {', '.join(choices)}")
    if cfg.model == "ivideogpt" and cfg.world_model.pretrained is None and cfg.world_model.preset is None:
        raise ValueError("model=ivideogpt needs world_model.pretrained=DIR (a checkpoint folder) or "
                         "world_model.preset=NAME (an untrained model, for tests)")


def build_planning_model(cfg: DictConfig, env_cfg: EnvConfig, device: torch.device) -> PlanningModel:
    """The oracle or the iVideoGPT world model the config names."""
    if cfg.model == "oracle":
        return OracleModel(env_cfg)
    from world_model.build import build_model  # the model stack loads only when it is used

    wm = cfg.world_model
    if wm.pretrained is not None:
        model = build_model(pretrained=str(wm.pretrained), image_size=env_cfg.image_size)
    else:
        model = build_model(str(wm.preset), action_dim=4, reward_head=cfg.objective == "reward",
                            image_size=env_cfg.image_size)
    return WorldModel(model.to(device).eval(), temperature=float(wm.temperature),
                      top_k=None if wm.top_k is None else int(wm.top_k),
                      chunk=None if wm.chunk is None else int(wm.chunk), generator=torch.Generator(device=device))


def _save_video(result: EpisodeResult, out: Path, fmt: str, logger: Logger, frame: int) -> Path | None:
    recorder = VideoRecorder(out / "videos", fmt=fmt, fps=5)
    recorder.start(result.video[0])
    for panel in result.video[1:]:
        recorder.add(panel)
    path = recorder.save("episode_0")
    if path is not None:
        logger.log_video("plan/video", path, frame)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """Runs (or resumes) the MPC episodes of `cfg`; returns the summary written to `summary.json`."""
    check_names(cfg)
    env_cfg = EnvConfig(task=str(cfg.task), seed=int(cfg.seed), **OmegaConf.to_container(cfg.env))
    control_steps = int(cfg.control_steps or env_cfg.episode_length)
    if not 1 <= control_steps <= env_cfg.episode_length:
        raise ValueError(f"control_steps={control_steps} must be in [1, env.episode_length="
                         f"{env_cfg.episode_length}]; raise env.episode_length for longer episodes")
    configure_threads(cfg.num_threads)
    device = pick_device(str(cfg.device))
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    record = OmegaConf.to_container(cfg, resolve=True)
    changes = config_changes(out, record, ignore=("episodes",))
    if changes:
        tqdm.write("resuming with changed settings: " + "; ".join(changes))
    planner_cfg = PlannerConfig(**{k: v for k, v in OmegaConf.to_container(cfg.planner).items() if k != "name"})

    model = build_planning_model(cfg, env_cfg, device)
    env = None
    logger = None
    try:
        planner = make_planner(str(cfg.planner.name), model.action_dim, planner_cfg,
                               generator=torch.Generator(device=device), device=device)
        check_horizon(model, planner)
        if tuple(model.frame_shape[1:]) != (env_cfg.image_size, env_cfg.image_size):
            raise ValueError(f"the world model takes {model.frame_shape[1]}x{model.frame_shape[2]} frames but "
                             f"env.image_size={env_cfg.image_size}; pass env.image_size={model.frame_shape[1]}")
        make_objective(str(cfg.objective), model, torch.zeros(model.frame_shape))  # fail before the episodes
        env = make_env(env_cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        logger = Logger(out, WandbConfig(**OmegaConf.to_container(cfg.wandb)), config=record, console=False)
        done = {int(row["episode"]): row for row in read_rows(out / "eval.csv")}
        todo = [i for i in range(int(cfg.episodes)) if i not in done]
        frames = max((int(float(row["frame"])) for row in done.values()), default=0)
        timer = Timer()
        bar = tqdm(total=len(todo) * control_steps, desc="control steps", unit="step", dynamic_ncols=True)
        for episode in todo:
            reset_seed = derive_seed(int(cfg.seed), PLAN_SEED_STREAM, episode)
            planner.generator.manual_seed(derive_seed(int(cfg.seed), PLAN_SEED_STREAM, episode, 1))
            if isinstance(model, WorldModel):
                model.generator.manual_seed(derive_seed(int(cfg.seed), PLAN_SEED_STREAM, episode, 2))
            goal, goal_success = goal_from_scripted(env, str(cfg.task), reset_seed)
            objective = make_objective(str(cfg.objective), model, goal)
            before = bar.n
            result = run_episode(env, model, planner, objective, reset_seed, control_steps, goal=goal,
                                 record=bool(cfg.video) and episode == 0, stop_on_success=bool(cfg.stop_on_success),
                                 on_step=lambda: bar.update(1))
            bar.update(control_steps - (bar.n - before))  # an episode stopped early
            frames += result.steps * env_cfg.action_repeat
            if result.video:
                _save_video(result, out, str(cfg.video_format), logger, frames)
            row = {"episode": episode, "success": int(result.success), "episode_return": result.episode_return,
                   "steps": result.steps, "first_success_step": result.first_success_step or "",
                   "seconds_per_step": result.seconds_per_step, "goal_success": int(goal_success),
                   "reset_seed": reset_seed, "total_time": timer.total()}
            logger.log("eval", row, frame=frames)
            done[episode] = {k: str(v) for k, v in row.items()}
            successes = sum(int(float(r["success"])) for r in done.values())
            bar.set_postfix_str(f"successes {successes}/{len(done)}")
            tqdm.write(f"episode {episode}: success={int(result.success)} return={result.episode_return:.1f} "
                       f"steps={result.steps} s/step={result.seconds_per_step:.2f}")
        bar.close()
    finally:
        model.close()
        if env is not None:
            env.close()
        if logger is not None:
            logger.close()
    return write_summary(out, int(cfg.episodes))


def write_summary(out: Path, episodes: int) -> dict[str, Any]:
    """Successes, mean return and mean seconds per control step over the first `episodes` rows of eval.csv."""
    rows = [r for r in read_rows(out / "eval.csv") if int(r["episode"]) < episodes]
    steps = sum(int(r["steps"]) for r in rows)
    summary = {
        "episodes": len(rows),
        "successes": sum(int(float(r["success"])) for r in rows),
        "mean_return": sum(float(r["episode_return"]) for r in rows) / max(len(rows), 1),
        # weighted by steps: the mean over all control steps of all episodes
        "seconds_per_control_step": sum(float(r["seconds_per_step"]) * int(r["steps"]) for r in rows) / max(steps, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        print(CONFIG_FILE.read_text())
        return 0
    try:
        cfg = load_config(args)
        summary = run(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['successes']}/{summary['episodes']} successful, mean return {summary['mean_return']:.1f}, "
          f"{summary['seconds_per_control_step']:.2f} s per control step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
