"""When MBPO's parts run: one `MBPOSchedule` of `core.schedule.Cadence`s in env frames."""
from __future__ import annotations

from core.schedule import Cadence
from mbrl.mbpo.config import ScheduleConfig


class MBPOSchedule:
    """The cadences of MBPO, in env frames. `due(frame)` -> runs of each, for the agent step at `frame`."""

    def __init__(self, cadences: list[Cadence], action_repeat: int) -> None:
        names = [c.name for c in cadences]
        if len(set(names)) != len(names):
            raise ValueError(f"cadence names must be unique, got {names}")
        self.cadences = {c.name: c for c in cadences}
        self.action_repeat = action_repeat

    def due(self, frame: int) -> dict[str, int]:
        """Runs of each cadence in the window of frames `(frame - action_repeat, frame]`."""
        return {name: c.runs(frame, self.action_repeat) for name, c in self.cadences.items()}

    def total_runs(self, frame: int) -> dict[str, int]:
        """Runs of each cadence at agent steps up to and including the one at `frame`."""
        return {name: c.total_runs(frame) for name, c in self.cadences.items()}

    def describe(self) -> str:
        parts = []
        for c in self.cadences.values():
            when = f"at {c.start}" + (f" then every {c.every}" if c.every else "")
            times = f" x{c.first_times} first" if c.first_times not in (None, c.times) else ""
            parts.append(f"{c.name} {when}{times}")
        return "; ".join(parts)


def build_schedule(cfg: ScheduleConfig, action_repeat: int, num_expl_steps: int, episode_length: int) -> MBPOSchedule:
    """MBPO's cadences from the config (the paper's schedule by default).

    Initial training fires once at `seed_frames` (`auto`: the agent's exploration steps x action repeat); the
    periodic tokenizer and transformer updates start one period after it; validation fires at `seed_frames`
    (right after the initial training) and then every `validate_every_episodes` episodes; imagination fires
    at `imagination_start_frames` (`init_rollout_batches` batches) and then every `rollout_every_frames`.
    A period of 0 turns the periodic part off.
    """
    seed_frames = num_expl_steps * action_repeat if cfg.seed_frames == "auto" else cfg.seed_frames
    if cfg.imagination_start_frames < seed_frames:
        raise ValueError(f"world_model.schedule.imagination_start_frames={cfg.imagination_start_frames} comes before "
                         f"the world model's initial training at {seed_frames} frames (schedule.seed_frames)")
    for name in ("transformer_every_frames", "tokenizer_every_frames", "rollout_every_frames"):
        if 0 < getattr(cfg, name) < action_repeat:
            raise ValueError(f"world_model.schedule.{name}={getattr(cfg, name)} is shorter than one agent step "
                             f"({action_repeat} frames)")

    def periodic(name: str, every: int, start: int) -> list[Cadence]:
        return [Cadence(name, start, every)] if every > 0 else []

    return MBPOSchedule([
        Cadence("init_train", seed_frames, 0, times=cfg.init_train_steps),
        *periodic("tokenizer", cfg.tokenizer_every_frames, seed_frames + cfg.tokenizer_every_frames),
        *periodic("transformer", cfg.transformer_every_frames, seed_frames + cfg.transformer_every_frames),
        *periodic("validate", cfg.validate_every_episodes * episode_length * action_repeat, seed_frames),
        Cadence("imagine", cfg.imagination_start_frames, cfg.rollout_every_frames,
                first_times=cfg.init_rollout_batches),
    ], action_repeat)
