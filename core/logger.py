"""Every metric sink of a run: console lines, CSV files, Weights & Biases (offline by default).

Metric names carry their section (`train/episode_return`, `eval/success_rate`); the x-axis is always env
frames (the `frame` column / W&B step metric), so runs of different agents (DrQ-v2, DreamerV3) and action
repeats line up.
"""

from __future__ import annotations

import csv
import datetime
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from termcolor import colored
from tqdm import tqdm

from core.io import atomic_write

#: Console columns per section: (metric, short label, format).
_CONSOLE = {
    "train": [
        ("frame", "F", "d"),
        ("step", "S", "d"),
        ("episode", "E", "d"),
        ("train/episode_return", "R", ".1f"),
        ("train/success", "SR", ".0f"),
        ("train/fps", "FPS", ".1f"),
        ("train/critic_loss", "CL", ".3f"),
        ("total_time", "T", "time"),
    ],
    "eval": [
        ("frame", "F", "d"),
        ("step", "S", "d"),
        ("episode", "E", "d"),
        ("eval/episode_return", "R", ".1f"),
        ("eval/success_rate", "SR", ".2f"),
        ("total_time", "T", "time"),
    ],
}
_WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    """W&B settings. `mode`: offline (files under the run folder, `wandb sync` later), online, disabled."""

    mode: str = "offline"
    project: str = "ivideogpt-mbrl"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in _WANDB_MODES:
            raise ValueError(f"wandb.mode={self.mode!r} is not one of {', '.join(_WANDB_MODES)}")


class CSVWriter:
    """Appends rows to a CSV file; a new column rewrites the file with the wider header."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                self.columns = next(csv.reader(f), [])

    def truncate_after(self, frame: int, keep_equal: bool = True) -> None:
        """Drops rows logged after `frame` (and at it unless `keep_equal`): a resumed run logs them again."""
        rows = self._read()
        kept = [r for r in rows if float(r.get("frame") or 0) < frame + keep_equal]
        if len(kept) != len(rows):
            self._write(kept)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new:
            rows = self._read()
            self.columns += new
            self._write(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def _read(self) -> list[dict[str, str]]:
        return read_rows(self.path)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)


class Logger:
    """Writes `train.csv` / `eval.csv` under `run_dir`, prints console lines, and logs to W&B.

    Args:
        run_dir: the run folder.
        wandb_cfg: W&B settings; its offline files go to `run_dir/wandb/`.
        config: the resolved run config (stored with the W&B run).
        resume_frame: when resuming, CSV rows after this frame are dropped and W&B continues the same run.
        console: print a line per train episode and per evaluation.
        checkpoint_after_eval: the checkpoint resumed from was taken after the evaluation at its frame, so
            that evaluation's row is kept (DreamerV3); otherwise it is dropped and logged again (the trainer).
    """

    def __init__(
        self,
        run_dir: str | Path,
        wandb_cfg: WandbConfig | None = None,
        config: dict | None = None,
        resume_frame: int | None = None,
        console: bool = True,
        checkpoint_after_eval: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self._csv = {section: CSVWriter(self.run_dir / f"{section}.csv") for section in _CONSOLE}
        if resume_frame is not None:
            # The trainer checkpoints at an episode end, after its train row and before the evaluation due at
            # the same frame, which the resumed run therefore repeats; DreamerV3 checkpoints after it.
            self._csv["train"].truncate_after(resume_frame)
            self._csv["eval"].truncate_after(resume_frame, keep_equal=checkpoint_after_eval)
        self._wandb = None
        wandb_cfg = wandb_cfg or WandbConfig()
        if wandb_cfg.mode != "disabled":
            self._wandb = self._init_wandb(wandb_cfg, config or {}, resume=resume_frame is not None)

    def _init_wandb(self, cfg: WandbConfig, config: dict, resume: bool):
        import wandb  # imported here: a disabled run does not pay for it

        # One id per run folder, so that a resumed run continues the same W&B run.
        id_file = self.run_dir / "wandb_id.txt"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=cfg.name,
            tags=cfg.tags,
            mode=cfg.mode,
            dir=str(self.run_dir),
            config=config,
            id=run_id,
            resume="allow" if resume else None,
            settings=wandb.Settings(console="off"),
        )
        run.define_metric("frame")
        run.define_metric("*", step_metric="frame")
        return run

    def log(self, section: str, metrics: dict[str, Any], frame: int) -> None:
        """One row of `section` ("train" or "eval") at env frame `frame` to every sink."""
        row = {"frame": frame, **metrics}
        self._csv[section].write(row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if self.console:
            tqdm.write(self._console_line(section, row), file=sys.stdout)
            sys.stdout.flush()  # lines reach log files (cluster jobs, pipes) as they happen

    def log_video(self, key: str, path: str | Path, frame: int) -> None:
        """Uploads a saved video file (GIF or MP4, which carries its own frame rate) to W&B under `key` at
        `frame`."""
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Video(str(path)), "frame": frame})

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    @staticmethod
    def _console_line(section: str, row: dict[str, Any]) -> str:
        parts = []
        for key, label, fmt in _CONSOLE[section]:
            if key not in row:
                continue
            value = row[key]
            text = str(datetime.timedelta(seconds=int(value))) if fmt == "time" else format(value, fmt)
            parts.append(f"{label}: {text}")
        color = "yellow" if section == "train" else "green"
        return f"{colored(f'| {section:<5}', color)} | " + " | ".join(parts)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV log (`train.csv`, `eval.csv`) as dicts of strings; [] when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def config_changes(run_dir: str | Path, record: Mapping[str, Any], ignore: tuple[str, ...] = ("resume",)
                   ) -> list[str]:
    """What a resumed launch's resolved config ``record`` changes against the run's saved ``config.yaml``.

    Returns:
        ``"key: old -> new"`` per changed dotted key (``"key: (absent) -> new"`` for new keys), sorted; empty
        when nothing changed or the run saved no config.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text()) or {}

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, Mapping):
            return {prefix: tree}
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}." if isinstance(value, Mapping) and value else f"{prefix}{key}"))
        return out

    before, after = flat(saved), flat(dict(record))
    missing = "(absent)"
    return [f"{key}: {before.get(key, missing)} -> {after.get(key, missing)}"
            for key in sorted(before.keys() | after.keys())
            if key not in ignore and before.get(key, missing) != after.get(key, missing)]


def resume_checked(run_dir: str | Path, record: Mapping[str, Any], load: Callable[[], None],
                   say: Callable[[str], object] = tqdm.write) -> None:
    """Run ``load`` (a trainer restoring its checkpoint) for a resumed launch with config ``record``.

    Prints (``say``) the settings that changed since the run started (``config_changes``). A checkpoint that
    does not load (a model built differently, say) becomes one ``ValueError`` that names those settings.
    """
    changes = config_changes(run_dir, record)
    if changes:
        say("resuming with changed settings: " + "; ".join(changes))
    try:
        load()
    except (ValueError, RuntimeError, KeyError) as err:
        raise resume_error(run_dir, err, changes) from err


def resume_error(run_dir: str | Path, err: Exception, changes: list[str]) -> ValueError:
    """The one-line error of a checkpoint that does not load into what this launch's config built."""
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        hint = (f"settings changed since the run started ({shown}): resume with the values in "
                f"{Path(run_dir) / 'config.yaml'}")
    else:
        hint = "the run's config is unchanged, so the checkpoint was written by other code or is damaged"
    return ValueError(f"cannot resume {run_dir}: {err}; {hint}")


def save_run_info(run_dir: str | Path, config_yaml: str, source_dir: str | Path) -> None:
    """Writes the resolved config (`config.yaml`) and the code version (`git.txt`, `git_diff.patch`).

    Outside a git checkout (or without git) `git.txt` says so and no patch is written.
    """
    run_dir = Path(run_dir)
    (run_dir / "config.yaml").write_text(config_yaml)

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], check=False, cwd=source_dir, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())
        return result.stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        (run_dir / "git.txt").write_text(f"no git information: {err}\n")
        return
    (run_dir / "git.txt").write_text(f"commit: {commit}\ndirty: {bool(diff)}\n")
    if diff:
        (run_dir / "git_diff.patch").write_text(diff)
