"""The bridge between sheeprl's DreamerV3 loop and our logging and evaluation.

sheeprl builds its pieces from config, so it reaches ours through three `_target_`s that look up the
running `Session` by id (sheeprl runs in this process, its train envs too: `env.sync_env=True`):

- `make_train_env`: our env wrapped as `DictFrameEnv`; every agent step and episode end goes to the session,
  which counts env frames and logs `train/episode_return`, `train/success`, ... per episode.
- `SessionCallback` (a Fabric callback): sheeprl calls `on_checkpoint_coupled` every `checkpoint.every`
  agent steps and at the end; the session then checkpoints and/or evaluates, as each is due.
- `SessionMetricsLogger` (sheeprl's `metric.logger`): sheeprl's averaged losses, attached to the next
  train row as `train/world_model_loss`, `train/kl`, ...

Resume: after every sheeprl checkpoint (written by sheeprl's own callback: model, optimizers, replay, its
counters) the session writes `<run>/dreamerv3_resume.json` atomically: the checkpoint's path and our counters
at it. `mbrl.dreamerv3.run` reads it back (`resume_point`), hands the path to sheeprl
(`checkpoint.resume_from`) and starts the session from those counters; the envs start fresh episodes there.
sheeprl re-seeds its random streams from the run seed on resume, so a resumed run continues from the same
state but not along the same random draws as an uninterrupted one would.

Evaluation: `num_eval_episodes` episodes of the greedy policy (the actor's mode) on a separate env, rebuilt
from the state sheeprl hands to the callback, reset with the same seeds as `mbrl.trainer` uses at the same
agent step; logged as `eval/episode_return` (mean), `eval/success_rate` (fraction of episodes with any
success). Unlike `mbrl.trainer`, there is no evaluation at frame 0: sheeprl's loop has no hook before it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import Logger as FabricLogger

from core.checkpoint import should_resume
from core.io import atomic_write
from core.logger import Logger
from core.runtime import Timer
from core.schedule import crossed
from core.video import VideoRecorder
from mbrl.dreamerv3.config import OBS_KEY, RunSpec
from mbrl.dreamerv3.env import DictFrameEnv
from mbrl.envs import make_env
from mbrl.evaluation import run_eval_episodes

_SESSIONS: dict[str, Session] = {}
RESUME_FILE = "dreamerv3_resume.json"


@dataclass(frozen=True)
class ResumePoint:
    """Where a DreamerV3 run can continue from: sheeprl's checkpoint and our counters at it."""

    checkpoint: str  # sheeprl's checkpoint file (sheeprl reads it with its own loader)
    step: int  # agent steps played by all train envs
    episode: int  # finished train episodes
    evaluated_frame: int
    checkpointed_frame: int
    total_time: float  # wall-clock seconds of the run so far

    def frame(self, action_repeat: int) -> int:
        return self.step * action_repeat

    def save(self, run_dir: Path) -> None:
        """Writes `run_dir/dreamerv3_resume.json` atomically (beside and renamed into place)."""
        text = json.dumps(asdict(self), indent=1)
        atomic_write(run_dir / RESUME_FILE, lambda tmp: Path(tmp).write_text(text))


def resume_point(run_dir: Path, resume: str | bool) -> ResumePoint | None:
    """The point a launch into `run_dir` continues from, or None for a fresh run (`resume`: auto/True/False).

    The resume file stands for the run's checkpoint in the one resume policy
    (`core.checkpoint.should_resume`); a folder with train or eval rows but no resume file is refused too,
    whatever `resume` says: a relaunch would append a second run to its CSV files.

    Raises:
        ValueError: resume=true without a checkpoint, resume=false into a run folder, a folder that holds a
            run with nothing to resume from, or a resume file whose checkpoint is gone.
    """
    path = run_dir / RESUME_FILE
    if should_resume(path, resume, run=f"the DreamerV3 run {run_dir}"):
        point = ResumePoint(**json.loads(path.read_text()))
        if not Path(point.checkpoint).is_file():
            raise ValueError(f"{path} names the sheeprl checkpoint {point.checkpoint}, which does not exist; "
                             "start a new run in a new folder")
        return point
    if any((run_dir / name).exists() for name in ("train.csv", "eval.csv")):
        raise ValueError(f"{run_dir} already holds a run but no DreamerV3 checkpoint to resume from (it stopped "
                         "before its first one, or ran with agent.save_checkpoints=false): use a new folder")
    return None


class Session:
    """Counters, logging and evaluation of one DreamerV3 run (see the module docstring).

    Args:
        spec: the run's settings.
        sheeprl_cfg: the resolved sheeprl config the run is launched with (rebuilds the policy to evaluate).
        logger: our run logger (CSV files, console, W&B).
        run_dir: the run folder (videos go to `run_dir/videos`).
        sheeprl_dir: sheeprl's own folder (its config, checkpoints, memory-mapped replay).
        resume: the counters to continue from (sheeprl must be resuming from the same checkpoint).
    """

    def __init__(
        self, spec: RunSpec, sheeprl_cfg: Mapping[str, Any], logger: Logger, run_dir: Path, sheeprl_dir: Path,
        resume: ResumePoint | None = None,
    ) -> None:
        from sheeprl.utils.callback import CheckpointCallback

        self.spec = spec
        self.sheeprl_cfg = sheeprl_cfg
        self.logger = logger
        self.run_dir = run_dir
        self.sheeprl_dir = sheeprl_dir
        self.step = resume.step if resume else 0  # agent steps played by all train envs
        self.episode = resume.episode if resume else 0  # finished train episodes
        self.timer = Timer()
        self._time_before = resume.total_time if resume else 0.0  # wall clock of the runs this one resumes
        self._row_frame = self.frame  # frame of the last train row
        self._row_seconds = 0.0  # wall clock since the last train row, evaluations excluded
        self._pending: dict[str, float] = {}  # sheeprl metrics waiting for the next train row
        self._evaluated_frame = resume.evaluated_frame if resume else 0
        self._checkpointed_frame = resume.checkpointed_frame if resume else 0
        self._eval_env: DictFrameEnv | None = None
        self._video = VideoRecorder(run_dir / "videos", spec.video_format, enabled=spec.save_video)
        self._checkpointer = CheckpointCallback(keep_last=spec.agent.keep_checkpoints)

    @property
    def frame(self) -> int:
        """Env frames so far (agent steps x action repeat)."""
        return self.step * self.spec.env.action_repeat

    @property
    def total_time(self) -> float:
        """Wall-clock seconds of the run, the launches it resumes included."""
        return self._time_before + self.timer.total()

    # ------------------------------------------------------------------------------ train envs
    def on_env_step(self) -> None:
        self.step += 1

    def on_episode_end(self, episode_return: float, success: bool, agent_steps: int) -> None:
        self.episode += 1
        self._row_seconds += self.timer.lap()
        row = {
            "step": self.step,
            "episode": self.episode,
            "train/episode_return": float(episode_return),
            "train/success": float(success),
            "train/episode_length": agent_steps * self.spec.env.action_repeat,
            "train/fps": (self.frame - self._row_frame) / max(self._row_seconds, 1e-9),
            **self._pending,
            "total_time": self.total_time,
        }
        self._pending = {}
        self._row_frame, self._row_seconds = self.frame, 0.0
        self.logger.log("train", row, self.frame)

    def add_sheeprl_metrics(self, metrics: Mapping[str, Any]) -> None:
        """sheeprl's averaged metrics, renamed to ours; the last ones of a run (after its last episode) are
        not logged."""
        for key, value in metrics.items():
            name = _our_metric_name(key)
            if name is not None:
                self._pending[name] = float(value)

    # ------------------------------------------------------------------- checkpoints, evaluation
    def on_checkpoint(
        self, fabric: Fabric, ckpt_path: str, state: dict[str, Any], replay_buffer: Any
    ) -> None:
        """sheeprl's checkpoint hook: checkpoint and/or evaluate, whichever is due at this frame."""
        num_envs = self.spec.agent.num_envs
        if state["iter_num"] * num_envs != self.step:
            raise RuntimeError(
                f"sheeprl is at agent step {state['iter_num'] * num_envs} but the envs counted "
                f"{self.step}: the frame axis would be wrong"
            )
        final = self.step >= self.spec.final_step
        # evaluation first: the checkpoint then includes it, and a resumed run keeps its row (the logger is
        # told so) instead of losing it, since sheeprl's loop has no hook to repeat it before going on
        if final or crossed(self._evaluated_frame, self.frame, self.spec.eval_every_frames):
            self._evaluated_frame = self.frame
            if self.spec.num_eval_episodes > 0:
                self.evaluate(fabric, state)
        if final or crossed(self._checkpointed_frame, self.frame, self.spec.checkpoint_every_frames):
            self._checkpointed_frame = self.frame
            if self.spec.agent.save_checkpoints:
                self._checkpointer.on_checkpoint_coupled(fabric, ckpt_path, state, replay_buffer)
                ResumePoint(str(Path(ckpt_path).resolve()), self.step, self.episode, self._evaluated_frame,
                            self._checkpointed_frame, self.total_time).save(self.run_dir)

    def evaluate(self, fabric: Fabric, state: dict[str, Any]) -> None:
        """Greedy episodes with the policy in `state` (sheeprl's checkpoint state); logs `eval/*`."""
        self._row_seconds += self.timer.lap()
        if self._eval_env is None:
            self._eval_env = DictFrameEnv(make_env(self.spec.env))
        env = self._eval_env
        devices = [fabric.device] if fabric.device.type == "cuda" else []
        # Building the policy draws initial weights: keep the training's random streams untouched.
        with torch.random.fork_rng(devices=devices):
            player = _build_player(fabric, self.sheeprl_cfg, env, state)
            metrics = run_eval_episodes(
                env, lambda obs: _greedy_action(fabric, player, obs), run_seed=self.spec.seed, step=self.step,
                num_episodes=self.spec.num_eval_episodes, action_repeat=self.spec.env.action_repeat,
                video=self._video, on_reset=player.init_states)
        if metrics is None:
            return
        row = {"step": self.step, "episode": self.episode, **metrics, "total_time": self.total_time}
        self.logger.log("eval", row, self.frame)
        video = self._video.save(f"eval_{self.frame}")
        if video is not None:
            self.logger.log_video("eval/video", video, self.frame)
        self.timer.lap()  # the evaluation's time does not count toward the train fps

    def close(self) -> None:
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None


def _our_metric_name(key: str) -> str | None:
    """sheeprl's metric name -> ours; None for the ones our train rows already have (returns, lengths,
    env timings)."""
    group, _, name = key.partition("/")
    if group in ("Loss", "State", "Params"):
        return f"train/{name}"
    if group == "Grads":
        return f"train/grad_norm_{name}"
    if key == "Time/sps_train":
        return "train/updates_per_second"
    return None


def _build_player(fabric: Fabric, cfg: Mapping[str, Any], env: DictFrameEnv, state: dict[str, Any]) -> Any:
    """sheeprl's DreamerV3 player (encoder, RSSM, actor) with the weights of `state`, for one env."""
    from sheeprl.algos.dreamer_v3.agent import build_agent

    *_, player = build_agent(
        fabric, env.action_space.shape, True, cfg, env.observation_space, state["world_model"], state["actor"]
    )
    player.num_envs = 1
    return player


def _greedy_action(fabric: Fabric, player: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The actor's mode for `obs`. Our env's actions are in [-1, 1], so sheeprl's action normalisation
    (`algo.normalize_actions`) is the identity and the actor's output is the env action."""
    from sheeprl.algos.dreamer_v3.utils import prepare_obs

    with torch.inference_mode():
        actions = player.get_actions(prepare_obs(fabric, obs, cnn_keys=[OBS_KEY]), greedy=True)
        return torch.cat(actions, -1).reshape(-1).float().cpu().numpy()


# ------------------------------------------------------------------------------------ registry
def new_session_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def registered(session_id: str, session: Session) -> Iterator[None]:
    """Makes `session` reachable by sheeprl's `_target_`s under `session_id` while the block runs."""
    if session_id in _SESSIONS:
        raise RuntimeError(f"DreamerV3 session {session_id!r} is already running")
    _SESSIONS[session_id] = session
    try:
        yield
    finally:
        del _SESSIONS[session_id]


def get_session(session_id: str) -> Session:
    try:
        return _SESSIONS[session_id]
    except KeyError:
        raise RuntimeError(
            f"no DreamerV3 session {session_id!r} in this process: launch through "
            "mbrl.dreamerv3.run, which keeps sheeprl's envs in-process (env.sync_env=True)"
        ) from None


def make_train_env(env: dict[str, Any], seed: int, session: str) -> DictFrameEnv:
    """sheeprl's env factory (`env.wrapper._target_`): `env` holds `EnvConfig` fields, sheeprl passes the seed."""
    from mbrl.envs import EnvConfig

    return DictFrameEnv(make_env(EnvConfig(**env, seed=seed)), get_session(session))


class SessionCallback:
    """sheeprl's Fabric callback: its checkpoint hook hands over to `Session.on_checkpoint`."""

    def __init__(self, session: str) -> None:
        self.session = get_session(session)

    def on_checkpoint_coupled(
        self, fabric: Fabric, ckpt_path: str, state: dict[str, Any], replay_buffer: Any = None
    ) -> None:
        self.session.on_checkpoint(fabric, ckpt_path, state, replay_buffer)


class SessionMetricsLogger(FabricLogger):
    """sheeprl's `metric.logger`: its metrics go to the session; its folder is `<run>/sheeprl`."""

    def __init__(self, session: str) -> None:
        super().__init__()
        self.session = get_session(session)

    @property
    def name(self) -> str:
        return "dreamerv3"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return str(self.session.sheeprl_dir)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.session.add_sheeprl_metrics(metrics)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: sheeprl writes its resolved config to `<run>/sheeprl/config.yaml` itself."""
