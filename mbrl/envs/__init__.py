"""Pixel Meta-World: `make_env(EnvConfig(task="door_open"))`; task names; scripted policies."""

import os
import sys

# Render headless by default (servers have no display). MuJoCo reads MUJOCO_GL once, when first imported:
# an explicit choice, or one made before MuJoCo was imported elsewhere, is kept.
if sys.platform.startswith("linux") and "mujoco" not in sys.modules:
    os.environ.setdefault("MUJOCO_GL", "egl")

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
