"""Pixel Meta-World: `make_env(EnvConfig(task="door_open"))`; task names; scripted policies."""

from mbrl.envs.metaworld import EnvConfig, MetaWorldPixelEnv, make_env
from mbrl.envs.render import RENDER_PRESETS, RenderSettings
from mbrl.envs.tasks import TASK_IDS, TASKS, resolve_task, scripted_policy, short_name

__all__ = [
    "RENDER_PRESETS",
    "TASKS",
    "TASK_IDS",
    "EnvConfig",
    "MetaWorldPixelEnv",
    "RenderSettings",
    "make_env",
    "resolve_task",
    "scripted_policy",
    "short_name",
]
