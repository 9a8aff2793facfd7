"""Logger: CSV files with a frame column, W&B offline files with the shared metric names, resume."""

from __future__ import annotations

from helpers import read_csv, wandb_record

from core.logger import CSVWriter, Logger, WandbConfig, config_changes, resume_error, save_run_info

TRAIN_ROW = {"step": 50, "episode": 1, "train/episode_return": 12.5, "train/success": 0.0}
EVAL_ROW = {"step": 50, "episode": 1, "eval/episode_return": 30.0, "eval/success_rate": 0.25}


def test_csv_and_wandb_offline_hold_the_metric_names(tmp_path):
    logger = Logger(
        tmp_path,
        WandbConfig(mode="offline", project="test", group="door_open", name="drqv2-1"),
        config={"task": "door_open"},
        console=False,
    )
    logger.log("train", TRAIN_ROW, frame=100)
    logger.log("train", {**TRAIN_ROW, "train/critic_loss": 0.3}, frame=200)  # a new column appears later
    logger.log("eval", EVAL_ROW, frame=200)
    logger.close()

    train = read_csv(tmp_path / "train.csv")
    assert [r["frame"] for r in train] == ["100", "200"]
    assert train[0]["train/critic_loss"] == "" and train[1]["train/critic_loss"] == "0.3"
    evals = read_csv(tmp_path / "eval.csv")
    assert evals[0]["frame"] == "200" and float(evals[0]["eval/success_rate"]) == 0.25

    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    data = wandb_record(tmp_path, b"train/critic_loss")
    for name in (
        "eval/success_rate",
        "eval/episode_return",
        "train/episode_return",
        "train/success",
        "train/critic_loss",
        "frame",
    ):
        assert name.encode() in data, name


def test_disabled_wandb_writes_no_files(tmp_path):
    logger = Logger(tmp_path, WandbConfig(mode="disabled"), console=False)
    logger.log("eval", EVAL_ROW, frame=0)
    logger.close()
    assert not (tmp_path / "wandb").exists()
    assert (tmp_path / "eval.csv").exists()


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    writer = CSVWriter(tmp_path / "train.csv")
    for frame in (100, 200, 300):
        writer.write({"frame": frame, "train/episode_return": frame / 10})
    writer = CSVWriter(tmp_path / "train.csv")  # a new launch reads the existing header
    writer.truncate_after(200)
    writer.write({"frame": 300, "train/episode_return": 1.0})
    rows = read_csv(tmp_path / "train.csv")
    assert [(r["frame"], r["train/episode_return"]) for r in rows] == [
        ("100", "10.0"),
        ("200", "20.0"),
        ("300", "1.0"),
    ]


def test_console_line_names_the_section_and_values(capsys):
    line = Logger._console_line("eval", {"frame": 200, **EVAL_ROW, "total_time": 75})
    assert "eval" in line and "F: 200" in line and "SR: 0.25" in line and "T: 0:01:15" in line


def test_run_info_outside_git(tmp_path):
    save_run_info(tmp_path, "task: door_open\n", source_dir=tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "task: door_open\n"
    assert "no git information" in (tmp_path / "git.txt").read_text()
    assert not (tmp_path / "git_diff.patch").exists()


def test_logger_resume_keeps_train_rows_at_the_checkpoint_but_repeats_its_evaluation(tmp_path):
    first = Logger(tmp_path, WandbConfig(mode="disabled"), console=False)
    for frame in (100, 200):
        first.log("train", TRAIN_ROW, frame)
        first.log("eval", EVAL_ROW, frame)
    first.close()
    Logger(tmp_path, WandbConfig(mode="disabled"), console=False, resume_frame=200).close()
    assert [r["frame"] for r in read_csv(tmp_path / "train.csv")] == ["100", "200"]
    assert [r["frame"] for r in read_csv(tmp_path / "eval.csv")] == ["100"]


def test_config_changes_lists_what_a_resumed_launch_changed(tmp_path):
    assert config_changes(tmp_path, {"a": 1}) == []  # no saved config: nothing to compare
    (tmp_path / "config.yaml").write_text("seed: 1\nresume: auto\nagent:\n  lr: 0.0001\n  nstep: 3\nold: x\n")
    record = {"seed": 1, "resume": True, "agent": {"lr": 0.001, "nstep": 3}, "new": None}
    assert config_changes(tmp_path, record) == ["agent.lr: 0.0001 -> 0.001", "new: (absent) -> None",
                                                "old: x -> (absent)"]  # resume itself is not a change
    err = resume_error(tmp_path, RuntimeError("size mismatch"), config_changes(tmp_path, record))
    assert "cannot resume" in str(err) and "size mismatch" in str(err) and "agent.lr: 0.0001 -> 0.001" in str(err)
    assert "unchanged" in str(resume_error(tmp_path, KeyError("agent"), []))
