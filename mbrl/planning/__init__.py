"""Planning with models: sampling-based optimizers (MPPI, CEM), objectives, and models a planner can drive
(the iVideoGPT world model, the simulator as an oracle). The CLI is `python -m mbrl.plan`; see docs/planning.md."""

from mbrl.planning.models import OracleModel, PlanningModel, Rollout, WorldModel
from mbrl.planning.mpc import EpisodeResult, goal_from_scripted, run_episode
from mbrl.planning.objectives import OBJECTIVES, GoalImage, Objective, PredictedReward, make_objective
from mbrl.planning.planners import CEM, MPPI, PLANNERS, Planner, PlannerConfig, PlanResult, make_planner

__all__ = [
    "CEM",
    "MPPI",
    "OBJECTIVES",
    "PLANNERS",
    "EpisodeResult",
    "GoalImage",
    "Objective",
    "OracleModel",
    "PlanResult",
    "Planner",
    "PlannerConfig",
    "PlanningModel",
    "PredictedReward",
    "Rollout",
    "WorldModel",
    "goal_from_scripted",
    "make_objective",
    "make_planner",
    "run_episode",
]
