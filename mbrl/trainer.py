"""The online training loop (DrQ-v2 on pixel Meta-World), with evaluation, logging and exact resume.

One `Trainer` owns the counters (agent steps, episodes; env frames = steps x action repeat) and calls the
pieces in a fixed order every agent step:

    start an episode if none is running -> evaluate if due -> act -> world-model hook -> agent updates
    -> env step into the replay -> at an episode end: log it, checkpoint if due

Budgets and periods are configured in env frames. A world model plugs in through `mbrl.loop.WorldModelHooks`
(`on_step` for its own scheduled work, `agent_batch` to mix imagined data into the agent's batches);
`world_model=none` uses `NoWorldModel`, which samples real replay only, `world_model=ivideogpt` is MBPO
(`mbrl.mbpo.MBPO`). Wall-clock seconds per phase (env, agent updates, evaluation and the world model's
phases) are logged as `time/<phase>` (cumulative over the run, resumes included).

Resume: checkpoints are written at episode ends, so a resumed run starts a fresh episode exactly where the
uninterrupted run would have, and, since every episode's reset seed is derived from the counters, continues
with the same counters, replay, RNG streams and next batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.drqv2 import DrQV2Agent
from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, should_resume
from core.cpu import report_lines as cpu_report_lines
from core.logger import Logger, config_changes, resume_checked, resume_error
from core.precision import dtype_name
from core.runtime import Timer, configure_malloc, configure_threads, derive_seed, pick_device, set_seed
from core.schedule import Every, Ratio, Until, crossed
from core.video import VideoRecorder
from mbrl.demos import demo_episodes, demos_added
from mbrl.envs import make_env
from mbrl.evaluation import run_eval_episodes
from mbrl.loop import NoWorldModel, PhaseTimer, WorldModelHooks
from mbrl.replay import ReplayBuffer
from mbrl.train_config import TrainConfig

__all__ = ["CHECKPOINT_VERSION", "TrainConfig", "Trainer"]

CHECKPOINT_VERSION = 1
# Independent seed streams, combined with the run seed and a counter (see core.runtime.derive_seed).
# Evaluation uses mbrl.evaluation.EVAL_SEED_STREAM (1), shared with every agent.
# Demonstrations use mbrl.demos.DEMO_SEED_STREAM (2).
_TRAIN_EPISODE, _REPLAY = 0, 3


class Trainer:
    """Builds envs, agent, replay, logger and world model from a `TrainConfig`, then runs (or resumes) training."""

    def __init__(
        self, cfg: TrainConfig, run_dir: str | Path, config_record: dict[str, Any] | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / "checkpoints" / "latest.pt"
        resume = self._should_resume()
        configure_threads(cfg.num_threads)
        configure_malloc(cfg.malloc)
        set_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        self.action_repeat = cfg.env.action_repeat

        self.train_env = make_env(cfg.env)
        self.eval_env = make_env(cfg.env)
        obs_shape = self.train_env.observation_space.shape
        self.agent = DrQV2Agent(obs_shape, self.train_env.action_dim, cfg.agent, self.device)
        self.replay = ReplayBuffer(
            cfg.replay_capacity,
            self.train_env.frame_shape,
            self.train_env.action_dim,
            cfg.env.frame_stack,
            cfg.agent.nstep,
            cfg.agent.discount,
            seed=derive_seed(cfg.seed, _REPLAY),
        )
        self.video = VideoRecorder(self.run_dir / "videos", cfg.video_format, enabled=cfg.save_video)

        self.step = 0  # agent steps taken in the train env
        self.episode = 0  # finished train episodes
        self._checkpointed_frame = 0
        self._elapsed_before = 0.0  # wall-clock seconds of earlier launches of this run
        self._metrics: list[dict[str, float]] = []  # update metrics of the running episode
        self._episode_seconds = 0.0  # wall clock of the running episode's steps, evaluations excluded
        record = config_record or {}
        checkpoint = self._read_checkpoint(record) if resume else None
        self.logger = Logger(
            self.run_dir,
            cfg.wandb,
            config_record,
            console=cfg.console,
            resume_frame=None if checkpoint is None else checkpoint["counters"]["step"] * self.action_repeat,
        )
        self.phases = PhaseTimer()
        try:
            self.world_model = self._world_model()
            if checkpoint is not None:
                self._restore(checkpoint, record)
        except BaseException:
            self.logger.close()
            raise
        self.timer = Timer()

    def _world_model(self) -> WorldModelHooks:
        """`NoWorldModel`, or MBPO when `world_model=ivideogpt` (its stack is imported only then)."""
        if self.cfg.mbpo is None:
            return NoWorldModel(self.replay)
        from mbrl.mbpo import MBPO, LoopSettings

        cfg = self.cfg
        loop = LoopSettings(
            frame_stack=cfg.env.frame_stack, action_repeat=self.action_repeat,
            episode_length=cfg.env.episode_length, nstep=cfg.agent.nstep, discount=cfg.agent.discount,
            seed=cfg.seed, device=self.device, run_dir=self.run_dir,
        )
        return MBPO(cfg.mbpo, self.agent, self.replay, loop, timer=self.phases, videos=self.logger,
                    video_format=cfg.video_format if cfg.save_video else None)

    @property
    def frame(self) -> int:
        """Env frames so far (agent steps x action repeat): the x-axis of every schedule and plot."""
        return self.step * self.action_repeat

    def _should_resume(self) -> bool:
        return should_resume(self.checkpoint_path, self.cfg.resume, str(self.run_dir))

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Trains until `num_train_frames` env frames, saves a final checkpoint and evaluates once more."""
        cfg = self.cfg
        until = Until(cfg.num_train_frames, self.action_repeat)
        eval_due = Every(cfg.eval_every_frames, self.action_repeat)
        updates_due = Ratio(cfg.agent.updates_per_step)
        # Updates need both the exploration phase done and a full n-step window in the replay.
        learning_starts = max(cfg.agent.num_expl_steps, cfg.agent.nstep)
        tqdm.write(cpu_report_lines())  # the CPU, its instruction sets and the kernel choices made from them
        if self.agent.encoder_dtype != torch.float32:
            tqdm.write(f"DrQ-v2 encoder convolutions in {dtype_name(self.agent.encoder_dtype)} "
                       f"(agent.encoder_precision={cfg.agent.encoder_precision}; float32 is the paper's setting)")
        if self.step == 0 and cfg.demos:
            self._add_demos()

        # disable=None: no bar when stderr is not a terminal (cluster logs, pipes).
        bar = tqdm(
            total=cfg.num_train_frames,
            initial=min(self.frame, cfg.num_train_frames),
            unit="frame",
            disable=None if cfg.progress_bar else True,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        obs, last_eval = None, None
        while until(self.step):
            if obs is None:
                obs = self._start_episode()
            if eval_due(self.step):
                with self.phases.phase("eval"):
                    self.evaluate()
                last_eval = self.step
            action = self.agent.act(obs, self.step, eval_mode=False)
            world_model_metrics = self.world_model.on_step(self.step)
            if world_model_metrics:
                self._metrics.append(world_model_metrics)
            if self.step >= learning_starts:
                with self.phases.phase("agent_update"):
                    for _ in range(updates_due(self.step)):
                        batch = self.world_model.agent_batch(cfg.agent.batch_size)
                        self._metrics.append(self.agent.update(batch, self.step))
            with self.phases.phase("env"):
                obs, reward, terminated, truncated, info = self.train_env.step(action)
            done = terminated or truncated
            self.replay.add(action, reward, info["frame"], success=info["success"], last=done)
            self.step += 1
            self._episode_return += reward
            self._episode_success |= bool(info["success"])
            bar.update(self.action_repeat)
            if done:
                self._end_episode()
                obs = None
                if self._checkpoint_due():
                    self.save()
        bar.close()
        if self._checkpointed_frame != self.frame or not self.checkpoint_path.is_file():
            self.save()
        if last_eval != self.step:  # a final evaluation; the checkpoint precedes it, as every evaluation
            with self.phases.phase("eval"):
                self.evaluate()
        self.agent.save_weights(self.run_dir / "agent.safetensors")
        self.close()

    def _start_episode(self) -> np.ndarray:
        obs, info = self.train_env.reset(seed=derive_seed(self.cfg.seed, _TRAIN_EPISODE, self.episode))
        self.replay.add_first(info["frame"])
        self._episode_start_step = self.step
        self._episode_return, self._episode_success = 0.0, False
        self._metrics = []
        self._episode_seconds = 0.0
        self.timer.lap()
        return obs

    def _end_episode(self) -> None:
        self.episode += 1
        frames = (self.step - self._episode_start_step) * self.action_repeat
        self._episode_seconds += self.timer.lap()
        row = {
            "step": self.step,
            "episode": self.episode,
            "train/episode_return": self._episode_return,
            "train/success": float(self._episode_success),
            "train/episode_length": frames,
            "train/fps": frames / max(self._episode_seconds, 1e-9),
            "train/buffer_size": len(self.replay),
            "total_time": self._elapsed_before + self.timer.total(),
            **self.world_model.status(),
            **self.phases.totals(),
        }
        # Agent (and world-model) metrics: means over the updates of this episode; names that carry their
        # own section (`val/psnr`, `wm/transformer/ce`) keep it.
        keys = {k for m in self._metrics for k in m}
        for key in sorted(keys):
            values = [m[key] for m in self._metrics if key in m]
            row[key if "/" in key else f"train/{key}"] = float(np.mean(values))
        self.logger.log("train", row, self.frame)

    def _checkpoint_due(self) -> bool:
        return crossed(self._checkpointed_frame, self.frame, self.cfg.checkpoint_every_frames)

    def evaluate(self) -> None:
        """Runs `num_eval_episodes` deterministic episodes; logs `eval/*` and a video of the first one."""
        self._episode_seconds += self.timer.lap()
        metrics = run_eval_episodes(
            self.eval_env, lambda obs: self.agent.act(obs, self.step, eval_mode=True), run_seed=self.cfg.seed,
            step=self.step, num_episodes=self.cfg.num_eval_episodes, action_repeat=self.action_repeat,
            video=self.video)
        if metrics is None:
            return
        total_time = self._elapsed_before + self.timer.total()
        self.logger.log("eval", {"step": self.step, "episode": self.episode, **metrics, "total_time": total_time},
                        self.frame)
        video = self.video.save(f"eval_{self.frame}")
        if video is not None:
            self.logger.log_video("eval/video", video, self.frame)
        self.timer.lap()  # the evaluation's time does not count toward the train episode's fps

    def _add_demos(self) -> None:
        """Puts `demos` episodes of Meta-World's scripted policy into the replay (no frame budget used)."""
        episodes = list(demo_episodes(self.train_env, self.cfg.task, self.cfg.demos, self.cfg.seed))
        for episode in episodes:
            self.replay.add_episode(episode.frames, episode.actions, episode.rewards, episode.successes)
        tqdm.write(demos_added(episodes))

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Writes everything needed to continue exactly to `checkpoints/latest.pt` (atomically)."""
        save_checkpoint(
            self.checkpoint_path,
            {
                "version": CHECKPOINT_VERSION,
                "counters": {"step": self.step, "episode": self.episode, "frame": self.frame},
                "elapsed": self._elapsed_before + self.timer.total(),
                "agent": self.agent.state_dict(),
                "replay": self.replay.state_dict(),
                "world_model": self.world_model.state_dict(),
                "phase_seconds": dict(self.phases.seconds),
                "rng": rng_state(),
            },
        )
        self._checkpointed_frame = self.frame

    def _read_checkpoint(self, record: dict[str, Any]) -> dict[str, Any]:
        """`checkpoints/latest.pt` of the run being resumed, its version checked (one-line errors)."""
        state: dict[str, Any] = {}

        def read() -> None:
            state.update(load_checkpoint(self.checkpoint_path, map_location=self.device))
            if state.get("version") != CHECKPOINT_VERSION:
                raise ValueError(
                    f"{self.checkpoint_path} has checkpoint version {state.get('version')}, "
                    f"this code reads version {CHECKPOINT_VERSION}"
                )

        resume_checked(self.run_dir, record, read)
        return state

    def _restore(self, state: dict[str, Any], record: dict[str, Any]) -> None:
        """Restores `save()` output; the next episode starts fresh at the saved counters."""
        try:
            self.agent.load_state_dict(state["agent"])
            self.replay.load_state_dict(state["replay"])
            self.world_model.load_state_dict(state["world_model"])
            self.phases.seconds = dict(state.get("phase_seconds", {}))
            set_rng_state(state["rng"])
            self.step, self.episode = state["counters"]["step"], state["counters"]["episode"]
            self._elapsed_before = float(state["elapsed"])
        except (ValueError, RuntimeError, KeyError) as err:  # a model built differently, say
            raise resume_error(self.run_dir, err, config_changes(self.run_dir, record)) from err
        self._checkpointed_frame = self.frame
        tqdm.write(f"resumed from {self.checkpoint_path} at frame {self.frame} (episode {self.episode})")

    def close(self) -> None:
        self.logger.close()
        self.train_env.close()
        self.eval_env.close()
