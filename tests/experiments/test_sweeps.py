"""experiments/sweeps: the paper sweep's axes and what each method selects (composition only, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "experiments" / "sweeps"
PAPER_TASKS = [
    "button_press_topdown_wall",
    "coffee_push",
    "door_lock",
    "hammer",
    "handle_pull_side",
    "plate_slide",
]


def compose_train(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"hydra.searchpath=[file://{SWEEPS}]", "profile=paper", *overrides],
            return_hydra_config=hydra_config,
        )


def test_paper_sweep_spans_six_tasks_three_seeds_three_methods():
    params = compose_train("+sweep=paper", hydra_config=True).hydra.sweeper.params
    assert params["task"].split(",") == PAPER_TASKS
    assert params["seed"].split(",") == ["1", "2", "3"]
    assert params["+method"].split(",") == ["mbpo", "drqv2", "dreamerv3"]


@pytest.mark.parametrize(
    "method, agent, world_model",
    [
        ("drqv2", "drqv2", "none"),
        ("dreamerv3", "dreamerv3", "none"),
        ("mbpo", "drqv2", "ivideogpt"),
        ("mbpo_scratch", "drqv2", "ivideogpt"),
    ],
)
def test_methods_select_agent_and_world_model(method, agent, world_model, monkeypatch):
    monkeypatch.setenv("IVIDEOGPT_PRETRAINED", "/data/ivideogpt-oxe-64-act-free")
    cfg = compose_train(f"+method={method}", "seed=2")
    assert (cfg.agent.name, cfg.world_model.name) == (agent, world_model)
    assert cfg.logging.wandb.name == f"{method}-2" and list(cfg.logging.wandb.tags) == [method]
    if world_model != "none":
        expected = None if method == "mbpo_scratch" else "/data/ivideogpt-oxe-64-act-free"
        assert cfg.world_model.pretrained == expected
