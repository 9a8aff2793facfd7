"""Every command-line form Hydra accepts for `python -m mbrl.train`, through the real CLI in subprocesses.

Nothing here trains, except the multirun (two tiny jobs): `--cfg job|hydra|all`, `-c`/`-p`, `--help` and
`--info` print and exit. No GPU is faked: the subprocesses pick the profile of this machine (cpu without CUDA,
paper with it); the other branch is checked in-process through `register_auto_profile(cuda=...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import run_train_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mbrl.train import AUTO_PROFILE, CONFIG_DIR, machine_profile, profile_note, register_auto_profile

# What the two profiles set (profile/*.yaml, agent_profile/drqv2_cpu.yaml, world_model_profile/ivideogpt_*).
PAPER = {"num_train_frames": 260000, "num_eval_episodes": 20, "checkpoint_every_frames": 20000,
         "agent.batch_size": 256, "agent.updates_per_step": 2, "agent.encoder_precision": "float32",
         "world_model.preset": "paper64", "world_model.segment_batch_size": 16}
CPU = {"num_train_frames": 100000, "num_eval_episodes": 10, "checkpoint_every_frames": 10000,
       "agent.batch_size": 64, "agent.updates_per_step": 1, "agent.encoder_precision": "auto",
       "world_model.preset": "cpu", "world_model.segment_batch_size": 4}
HERE = CPU if AUTO_PROFILE == "cpu" else PAPER  # what profile=auto stands for on this machine
NOTE = "using profile=cpu" if AUTO_PROFILE == "cpu" else "using profile=paper"


def printed(*args: str) -> dict[str, Any]:
    """The config `python -m mbrl.train *args` prints (a `--cfg`/`-c` form), parsed."""
    result = run_train_cli(*args)
    assert "error" not in result.stderr.lower(), result.stderr
    return yaml.safe_load(result.stdout)


def value(cfg: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


def assert_profile(cfg: dict[str, Any], expected: dict[str, Any], world_model: str = "ivideogpt") -> None:
    for key, want in expected.items():
        if key.startswith("world_model.") and world_model != "ivideogpt":
            continue
        if key.startswith("agent.") and cfg["agent"]["name"] != "drqv2":
            continue
        assert value(cfg, key) == want, key


@pytest.mark.parametrize(
    "args",
    [
        ("task=door_open", "--cfg", "job"),  # the flag after the overrides (the form that failed)
        ("--cfg", "job", "task=door_open"),  # and before them
        ("-c", "job", "task=door_open"),
        ("task=door_open", "--cfg=job"),
    ],
)
def test_cfg_job_shows_the_machines_profile_in_every_flag_position(args):
    cfg = printed(*args)
    assert cfg["task"] == "door_open"
    assert (cfg["agent"]["name"], cfg["world_model"]["name"]) == ("drqv2", "ivideogpt")
    assert_profile(cfg, HERE)


def test_machine_profile_values_equal_the_named_profile():
    named = printed(f"profile={AUTO_PROFILE}", "--cfg", "job")
    assert printed("--cfg", "job") == named


@pytest.mark.parametrize("args", [("profile=paper", "--cfg", "job"), ("--cfg", "job", "profile=paper")])
def test_explicit_paper_profile_wins(args):
    assert_profile(printed(*args), PAPER)


def test_explicit_cpu_profile_wins():
    assert_profile(printed("--cfg", "job", "profile=cpu"), CPU)


@pytest.mark.parametrize(("args", "world_model"), [
    (("agent=dreamerv3", "task=door_open", "--cfg", "job"), "none"),  # agent=dreamerv3 implies world_model=none
    (("--cfg", "job", "agent=dreamerv3", "task=door_open"), "none"),
    (("agent=dreamerv3", "world_model=ivideogpt", "--cfg", "job"), "ivideogpt"),  # a named one is kept
    (("--cfg", "job", "world_model=ivideogpt", "agent=dreamerv3"), "ivideogpt"),
])
def test_dreamerv3_world_model(args, world_model):
    cfg = printed(*args)
    assert (cfg["agent"]["name"], cfg["world_model"]["name"]) == ("dreamerv3", world_model)
    if world_model == "none":
        assert cfg["world_model"] == {"name": "none"}
        assert_profile(cfg, HERE, world_model="none")
    else:
        assert cfg["world_model"]["preset"] == HERE["world_model.preset"]


def test_dreamerv3_with_paper_profile():
    cfg = printed("agent=dreamerv3", "profile=paper", "--cfg", "job")
    assert (cfg["world_model"]["name"], cfg["num_train_frames"]) == ("none", 260000)


def test_drqv2_keeps_mbpo_and_none_stays_none():
    assert printed("agent=drqv2", "--cfg", "job")["world_model"]["name"] == "ivideogpt"
    assert printed("--cfg", "job", "world_model=none")["world_model"] == {"name": "none"}


def test_cfg_job_with_package_prints_one_section():
    result = run_train_cli("-c", "job", "-p", "agent", "agent=dreamerv3")
    assert result.stdout.startswith("# @package agent")
    assert yaml.safe_load(result.stdout)["name"] == "dreamerv3"


def test_cfg_hydra_records_the_choices_and_run_folder_name():
    hydra = printed("task=reach", "agent=dreamerv3", "--cfg", "hydra")["hydra"]
    choices = hydra["runtime"]["choices"]
    assert (choices["profile"], choices["agent"], choices["world_model"]) == ("auto", "dreamerv3", "none")
    assert hydra["run"]["dir"] == (
        "${mbrl_run_dir:${runs_dir},${task},${agent.name},${world_model.name},${seed},${resume}}"
    )
    assert hydra["sweep"]["subdir"] == "${hydra.job.num}_${task}_${agent.name}_${world_model.name}_s${seed}"


def test_cfg_all_holds_both():
    cfg = printed("--cfg", "all", "task=reach")
    assert cfg["hydra"]["runtime"]["choices"]["profile"] == "auto" and cfg["task"] == "reach"
    assert_profile(cfg, HERE)


def test_help_lists_the_profiles_and_shows_the_effective_config():
    out = run_train_cli("task=reach", "--help").stdout
    assert "profile: auto, cpu, paper" in out
    config_part = out.split("Override anything in the config (foo.bar=value)", 1)[1]
    body = yaml.safe_load(config_part.split("Powered by Hydra")[0])
    assert body["task"] == "reach"
    assert_profile(body, HERE)


@pytest.mark.parametrize(
    "args", [("--info",), ("--info", "defaults"), ("agent=dreamerv3", "--info", "defaults")]
)
def test_info_shows_the_auto_entries(args):
    out = run_train_cli(*args).stdout
    assert "profile/auto" in out
    if "agent=dreamerv3" in args:
        assert "world_model/none" in out and "world_model/ivideogpt" not in out
    else:
        assert "agent_profile/drqv2_auto" in out and "world_model_profile/ivideogpt_auto" in out


def test_resolved_config_name_and_config_dir_forms():
    cfg = printed("--cfg", "job", "--resolve", "--config-name", "train", "agent=dreamerv3", "seed=4")
    assert cfg["logging"]["wandb"]["name"] == "dreamerv3-4" and cfg["world_model"] == {"name": "none"}
    sweep = printed("--config-dir", "experiments/sweeps", "+method=drqv2", "-c", "job")
    assert (sweep["agent"]["name"], sweep["world_model"]["name"]) == ("drqv2", "none")
    assert_profile(sweep, HERE, world_model="none")


@pytest.mark.parametrize(
    "args, words", [(("--hydra-help",), "== Flags =="), (("task=reach", "--version"), "Hydra 1.")]
)
def test_hydra_help_and_version(args, words):  # Hydra's own help takes no overrides (Hydra's rule, not ours)
    assert words in run_train_cli(*args).stdout


def test_bad_override_is_still_a_hydra_error():
    result = run_train_cli("--cfg", "job", "profile=gpu", check=False)
    assert result.returncode != 0 and "profile" in result.stderr
    assert "unrecognized arguments" not in result.stderr


@pytest.mark.slow
def test_multirun_runs_each_job_on_the_machines_profile(tmp_path):
    result = run_train_cli(
        "-m", "task=reach,door_open", "world_model=none", "num_threads=1", "env.image_size=32",
        "env.episode_length=10", "agent.batch_size=8", "agent.hidden_dim=32", "agent.feature_dim=16",
        "agent.num_filters=8", "agent.num_expl_steps=10", "replay_capacity=1000", "num_eval_episodes=0",
        "eval_every_frames=0", "save_video=false", "logging.wandb.mode=disabled", "num_train_frames=20",
        f"runs_dir={tmp_path}",
    )
    assert result.stderr.count(NOTE) == 2  # one note per job, saying what it picked and how to choose
    jobs = sorted(tmp_path.glob("multirun/*/*_s1"))
    assert [job.name for job in jobs] == ["0_reach_drqv2_none_s1", "1_door_open_drqv2_none_s1"]
    for job, task in zip(jobs, ("reach", "door_open"), strict=True):
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        assert cfg["task"] == task and cfg["world_model"] == {"name": "none"}
        assert cfg["checkpoint_every_frames"] == HERE["checkpoint_every_frames"]
        assert cfg["agent"]["updates_per_step"] == HERE["agent.updates_per_step"]
        assert (job / "train.csv").is_file()


def test_machine_profile_follows_cuda():
    assert machine_profile(cuda=True) == "paper" and machine_profile(cuda=False) == "cpu"
    assert AUTO_PROFILE == machine_profile(torch.cuda.is_available())


def test_profile_note_says_what_was_picked_and_how_to_choose():
    assert profile_note("paper") is None and profile_note("cpu") is None  # named on the command line
    cpu = profile_note("auto", picked="cpu")
    assert cpu is not None and "no GPU found: using profile=cpu" in cpu and "profile=paper" in cpu
    paper = profile_note("auto", picked="paper")
    assert paper is not None and "using profile=paper" in paper and "profile=cpu" in paper


def compose_auto(*overrides: str) -> dict[str, Any]:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)))


@pytest.mark.parametrize("cuda, expected", [(True, PAPER), (False, CPU)])
def test_auto_profile_is_the_picked_profile_on_either_machine(cuda, expected):
    try:
        assert register_auto_profile(cuda) == machine_profile(cuda)
        auto = compose_auto()
        assert auto == compose_auto(f"profile={machine_profile(cuda)}")
        assert_profile(auto, expected)
        dreamer = compose_auto("agent=dreamerv3")
        assert dreamer["world_model"] == {"name": "none"}
        assert dreamer["num_train_frames"] == expected["num_train_frames"]
    finally:
        register_auto_profile(torch.cuda.is_available())
    assert_profile(compose_auto(), HERE)


def test_auto_entries_mirror_every_profile_specific_file():
    names = {p.stem.rpartition("_")[0] for group in ("agent_profile", "world_model_profile")
             for p in Path(CONFIG_DIR, group).glob("*.yaml")}
    assert names == {"drqv2", "ivideogpt"}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for overrides in (["world_model=none"], ["agent=dreamerv3"], []):
            compose("train", overrides=overrides)  # every combination finds its _auto entries or none
