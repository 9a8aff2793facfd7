"""MBPO with an iVideoGPT world model (`world_model=ivideogpt`): the `mbrl.loop.WorldModelHooks` that the
trainer calls once per agent step.

    config    the `world_model` settings (`MBPOConfig` and its parts) and the loop's (`LoopSettings`)
    schedule  when each part runs: `MBPOSchedule` of `core.schedule.Cadence`s in env frames
    build     the config translated into `world_model.training.build_model`
    videos    validation and imagination videos
    hooks     `MBPO`: training, validation, imagination and the agent-batch mix, with a resumable state
"""
from mbrl.mbpo.build import describe, model_arguments, resolve_preset
from mbrl.mbpo.config import LoopSettings, MBPOConfig, RolloutConfig, ScheduleConfig, ValidationConfig
from mbrl.mbpo.hooks import MBPO, ImaginationAgent, VideoSink
from mbrl.mbpo.schedule import MBPOSchedule, build_schedule
from mbrl.mbpo.videos import draw_text, rollout_video, save_video, side_by_side

__all__ = [
    "MBPO", "ImaginationAgent", "LoopSettings", "MBPOConfig", "MBPOSchedule", "RolloutConfig", "ScheduleConfig",
    "ValidationConfig", "VideoSink", "build_schedule", "describe", "draw_text", "model_arguments",
    "resolve_preset", "rollout_video", "save_video", "side_by_side",
]
