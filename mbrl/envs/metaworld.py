"""Pixel Meta-World with the iVideoGPT / DrQ-v2 protocol, as a Gymnasium env.

Protocol (every setting in `EnvConfig`; defaults are the paper's):
- goal-observable task, new random object/goal positions at every reset, drawn from the env's own
  generator seeded by `EnvConfig.seed` (or `reset(seed=...)`), so runs are reproducible;
- after Meta-World's reset one zero-action simulator step is taken before the first frame is rendered (as
  the official wrapper does);
- `corner` camera, `image_size` square, flipped upright (MuJoCo renders this camera upside down);
- action repeat 2: the action (clipped to [-1, 1]) is applied `action_repeat` simulator steps, the frame is
  rendered once, after the last one (rendering dominates the cost of a step);
- reward = sum of the simulator rewards over the repeat, plus `success_bonus` once if any of those steps
  reported success; `info["success"]` = any success during the repeat;
- frame stack 3: `obs` uint8 `(frame_stack * 3, H, W)`, newest frame last; at reset the first frame fills
  the whole stack (the replay buffer rebuilds stacks the same way);
- episodes last `episode_length` agent steps and end with `truncated=True`; `terminated` is always False.

Rendering quality (`render_quality`, see `mbrl.envs.render`): `fast` (default on CPU: no shadows, no
multisampling, no reflections; mean absolute pixel difference about 5 of 255 against Meta-World's own look)
or `paper` (Meta-World's look: 4096 shadow map, 4x multisampling; several times slower on CPU), or `medium`
in between (about 3 of 255). Measure on your machine with `python experiments/bench_env.py`.

GL hygiene: call `env.close()` when done. Each env owns its GL context and frees it inside that context, so
closing (or garbage-collecting) one env never blanks another env's frames. Vectorised envs must use the
`spawn` start method (`gymnasium.vector.AsyncVectorEnv(..., context="spawn")`): forking a process that
holds a GL context hangs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

from mbrl.envs.render import OffscreenRenderer, render_settings
from mbrl.envs.tasks import resolve_task

_GOAL_OBSERVABLE_SUFFIX = "-goal-observable"
RGB_CHANNELS = 3
# Everything MuJoCo integrates: time, qpos, qvel, act, warm-start accelerations, controls, applied forces, mocap.
_MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
# Model arrays Meta-World rewrites at reset (goal sites, object bodies) and that the renderer reads.
_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "site_quat")
# Settings of the inner env, not episode state: an env restored from another keeps its own.
_NOT_STATE = frozenset({"max_path_length"})


@dataclass(frozen=True)
class SimState:
    """Everything `MetaWorldPixelEnv.set_sim_state` needs to continue an episode exactly (see
    `MetaWorldPixelEnv.get_sim_state`). Treat it as opaque; it holds copies, never views."""

    task_id: str
    physics: np.ndarray  # mj_getState(mjSTATE_INTEGRATION)
    model: dict[str, np.ndarray]  # _MODEL_FIELDS
    inner: dict[str, Any]  # the Meta-World env's plain Python attributes (goal, step counter, last obs, ...)
    stack: np.ndarray  # (frame_stack, 3, H, W) uint8
    state_obs: np.ndarray | None
    steps: int | None


@dataclass
class EnvConfig:
    """Settings of the pixel Meta-World env (defaults: the paper's protocol)."""

    task: str = "door_open"
    seed: int = 0
    image_size: int = 64
    camera: str = "corner"
    frame_stack: int = 3
    action_repeat: int = 2
    episode_length: int = 100  # agent steps
    success_bonus: float = 10.0
    render_quality: str = "fast"  # "fast" | "medium" | "paper"
    flip_vertical: bool = True

    def __post_init__(self) -> None:
        resolve_task(self.task)  # fail early, with the close matches, on a typo
        render_settings(self.render_quality)
        for name in ("image_size", "frame_stack", "action_repeat", "episode_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EnvConfig.{name} must be >= 1, got {getattr(self, name)}")


class MetaWorldPixelEnv(gym.Env):
    """Pixel Meta-World task (see the module docstring for the protocol).

    Attributes:
        frame_shape: `(3, H, W)` of one frame.
        frame_stack: frames per observation.
        action_dim: size of the action vector (4).
        state_obs: the latest 39-dim state observation (for Meta-World's scripted policies).
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, cfg: EnvConfig) -> None:
        self.cfg = cfg
        self.task_id = resolve_task(cfg.task)
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[self.task_id + _GOAL_OBSERVABLE_SUFFIX](seed=cfg.seed)
        # Meta-World freezes the initial positions after construction and would otherwise draw new ones from
        # the global numpy generator; we want fresh positions every reset from the env's own seeded generator.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        # The inner env refuses to step past max_path_length simulator steps (+1: the step after reset).
        self._env.max_path_length = cfg.episode_length * cfg.action_repeat + 1
        self._renderer = OffscreenRenderer(
            self._env.model,
            self._env.data,
            cfg.camera,
            cfg.image_size,
            cfg.image_size,
            render_settings(cfg.render_quality),
        )

        self.frame_shape: tuple[int, int, int] = (RGB_CHANNELS, cfg.image_size, cfg.image_size)
        self.frame_stack = cfg.frame_stack
        self.action_dim = int(self._env.action_space.shape[0])
        self.observation_space = gym.spaces.Box(
            0, 255, (cfg.frame_stack * self.frame_shape[0], *self.frame_shape[1:]), dtype=np.uint8
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)
        self._stack = np.zeros((cfg.frame_stack, *self.frame_shape), dtype=np.uint8)
        self._state_obs: np.ndarray | None = None
        self._steps: int | None = None  # agent steps in the current episode; None until reset
        self._closed = False

    @property
    def state_obs(self) -> np.ndarray:
        """The latest state observation `(39,)` float64 (a copy)."""
        if self._state_obs is None:
            raise RuntimeError("no state yet: call reset() first")
        return self._state_obs.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Start an episode at new random positions. `seed` re-seeds the position generator.

        Returns:
            obs: uint8 `(frame_stack * 3, H, W)` (the first frame repeated), info: `{"success", "frame"}`.
        """
        super().reset(seed=seed)
        if self._closed:
            raise RuntimeError("reset() called after close(); make a new env")
        if seed is not None:
            self._env.seed(seed)
        self._env.reset()
        # As the official wrapper: one zero-action simulator step before the first frame.
        self._state_obs, *_ = self._env.step(np.zeros(self.action_dim, dtype=np.float32))
        frame = self._render_frame()
        self._stack[:] = frame
        self._steps = 0
        return self._observation(), {"success": False, "frame": frame}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply `action` for `action_repeat` simulator steps; render once.

        Returns:
            obs `(frame_stack * 3, H, W)` uint8, reward (summed + bonus), terminated (False), truncated,
            info `{"success": bool, "frame": (3, H, W) uint8}`.
        """
        if self._steps is None:
            raise RuntimeError("step() needs a running episode: call reset() first (also after truncation)")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {self.action_dim} finite numbers, got {action!r}")
        action = np.clip(action, -1.0, 1.0)

        reward, success = 0.0, False
        for _ in range(self.cfg.action_repeat):
            self._state_obs, sim_reward, _, _, sim_info = self._env.step(action)
            reward += float(sim_reward)
            success = success or bool(sim_info["success"])
        if success:
            reward += self.cfg.success_bonus

        frame = self._render_frame()
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
        self._steps += 1
        truncated = self._steps >= self.cfg.episode_length
        if truncated:
            self._steps = None
        return self._observation(), reward, False, truncated, {"success": success, "frame": frame}

    def get_sim_state(self) -> SimState:
        """A copy of the full episode state: MuJoCo's integration state (time, qpos, qvel, act, controls,
        mocap), the model arrays Meta-World moves at reset (goal site, object bodies), the Meta-World env's
        Python attributes (goal, object start, step counter, last observation) and ours (frame stack, state
        observation, step count). `set_sim_state` on this env, or on another env of the same task and config,
        continues from here: the same actions give the same frames, rewards and successes."""
        if self._closed:
            raise RuntimeError("get_sim_state() called after close(); make a new env")
        physics = np.empty(mujoco.mj_stateSize(self._env.model, _MJ_STATE), dtype=np.float64)
        mujoco.mj_getState(self._env.model, self._env.data, physics, _MJ_STATE)
        inner = {key: copy.deepcopy(value) for key, value in vars(self._env).items()
                 if key not in _NOT_STATE and _is_plain(value)}
        return SimState(
            task_id=self.task_id,
            physics=physics,
            model={name: getattr(self._env.model, name).copy() for name in _MODEL_FIELDS},
            inner=inner,
            stack=self._stack.copy(),
            state_obs=None if self._state_obs is None else self._state_obs.copy(),
            steps=self._steps,
        )

    def set_sim_state(self, state: SimState) -> None:
        """Restore a state from `get_sim_state` (of this env or another env of the same task and image
        settings); `state` is not modified and can be restored again."""
        if self._closed:
            raise RuntimeError("set_sim_state() called after close(); make a new env")
        if not isinstance(state, SimState):
            raise TypeError(f"set_sim_state needs a SimState from get_sim_state(), got {type(state).__name__}")
        if state.task_id != self.task_id or state.stack.shape != self._stack.shape:
            raise ValueError(f"the state is of {state.task_id} with frame stack {state.stack.shape}, this env is "
                             f"{self.task_id} with {self._stack.shape}; restore it into an env of the same config")
        for name, value in state.model.items():
            getattr(self._env.model, name)[:] = value
        for key, value in state.inner.items():
            setattr(self._env, key, copy.deepcopy(value))
        mujoco.mj_setState(self._env.model, self._env.data, state.physics, _MJ_STATE)
        # positions for rendering and observations; the forward pass rewrites the solver's warm start, which
        # is part of the state (the next step would differ in the last bits), so the state is set again after
        mujoco.mj_forward(self._env.model, self._env.data)
        mujoco.mj_setState(self._env.model, self._env.data, state.physics, _MJ_STATE)
        self._stack[:] = state.stack
        self._state_obs = None if state.state_obs is None else state.state_obs.copy()
        self._steps = state.steps

    def render(self) -> np.ndarray:
        """The newest frame as an image `(H, W, 3)` uint8 (for videos)."""
        return np.ascontiguousarray(self._stack[-1].transpose(1, 2, 0))

    def close(self) -> None:
        """Free the GL context and the simulator. Call it before making a replacement env."""
        if self._closed:
            return
        self._renderer.close()
        self._env.close()
        self._closed = True

    def _render_frame(self) -> np.ndarray:
        image = self._renderer.render()  # (H, W, 3), top row first
        if self.cfg.flip_vertical:
            image = image[::-1]
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _observation(self) -> np.ndarray:
        return self._stack.reshape(self.observation_space.shape).copy()


def _is_plain(value: Any) -> bool:
    """Whether an attribute of the inner env is plain data (part of the episode state), not a simulator,
    renderer, space or random generator."""
    if isinstance(value, (np.ndarray, np.generic, bool, int, float, str, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_is_plain(item) for item in value.values())
    return False


def make_env(cfg: EnvConfig) -> MetaWorldPixelEnv:
    """The pixel Meta-World env described by `cfg`."""
    return MetaWorldPixelEnv(cfg)
