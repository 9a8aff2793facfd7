"""Meta-World task names: short names (`door_open`) <-> Meta-World ids (`door-open-v3`), scripted policies.

All 50 Meta-World v3 tasks are available. A task can be named in any of these spellings:
`door_open`, `door-open`, `door-open-v3`, `door-open-v3-goal-observable` (case-insensitive).
"""

from __future__ import annotations

import difflib
import warnings
from typing import Protocol

import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

_VERSION_SUFFIX = "-v3"
_OBSERVABILITY_SUFFIXES = ("-goal-observable", "-goal-hidden")

#: Meta-World ids of all tasks, e.g. "door-open-v3".
TASK_IDS: tuple[str, ...] = tuple(ALL_V3_ENVIRONMENTS.keys())


def short_name(task_id: str) -> str:
    """`door-open-v3` -> `door_open` (the name configs and run folders use)."""
    return task_id.removesuffix(_VERSION_SUFFIX).replace("-", "_")


#: Short names of all tasks, e.g. "door_open".
TASKS: tuple[str, ...] = tuple(short_name(t) for t in TASK_IDS)


def resolve_task(name: str) -> str:
    """Map any accepted spelling of a task name to its Meta-World id (`door_open` -> `door-open-v3`).

    Raises:
        ValueError: the name matches no task; the message lists the closest short names.
    """
    key = name.strip().lower().replace("_", "-")
    for suffix in _OBSERVABILITY_SUFFIXES:
        key = key.removesuffix(suffix)
    key = key.removesuffix(_VERSION_SUFFIX) + _VERSION_SUFFIX
    if key in ALL_V3_ENVIRONMENTS:
        return key
    close = difflib.get_close_matches(short_name(key), TASKS, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise ValueError(
        f"unknown Meta-World task {name!r} ({hint}); valid names: the 50 in mbrl.envs.TASKS, e.g. 'door_open'"
    )


class ScriptedPolicy(Protocol):
    """Meta-World's hand-written expert: maps the 39-dim state observation to an action in [-1, 1]^4."""

    def get_action(self, obs: np.ndarray) -> np.ndarray: ...


def scripted_policy(task: str) -> ScriptedPolicy:
    """Meta-World's scripted policy for `task` (any accepted spelling), acting on `env.state_obs`.

    Example: `policy = scripted_policy("door_open"); action = policy.get_action(env.state_obs)`.
    """
    # Imported lazily: metaworld.policies pulls in every policy module, which training does not need.
    from metaworld.policies import ENV_POLICY_MAP

    task_id = resolve_task(task)
    if task_id not in ENV_POLICY_MAP:
        raise ValueError(f"Meta-World ships no scripted policy for {task_id!r}")
    return _QuietPolicy(ENV_POLICY_MAP[task_id]())


class _QuietPolicy:
    """Meta-World's policies warn whenever their proportional controller saturates, which is routine (the
    action is clipped to [-1, 1] as intended); this keeps logs readable."""

    def __init__(self, policy: ScriptedPolicy) -> None:
        self.policy = policy

    def get_action(self, obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            return self.policy.get_action(obs)
