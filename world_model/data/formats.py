"""Dataset formats of episode ``.npz`` files: image key, frame stride, action storage and evaluation protocol.

Each episode file holds frames ``(T, H, W, 3)`` under the format's image key (uint8, or an integer type with
values in [0, 255] such as BAIR's int64) and, where the format has actions, ``action`` as

- ``per_frame``: ``(T, D)``, ``action[t]`` taken at frame t (BAIR, our Meta-World episodes);
- ``transitions``: ``(T - 1, D)``, one row per transition (RoboNet): a zero row is appended for the last frame;
- ``none``: no actions are read (Open X-Embodiment pre-training data, used action-free).

Open X-Embodiment datasets are subsampled to about 3 Hz as iVideoGPT's pre-training does: the frame stride is
``max(round(rate / 3), 1)`` for the dataset's control rate. Held-out test clips are every 100th file in sorted
order (:func:`held_out_files`), read from frame 0.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ACTION_KEY = "action"
REWARD_KEY = "reward"
ACTION_STORAGE = ("per_frame", "transitions", "none")
HELD_OUT_EVERY = 100
TARGET_RATE_HZ = 3.0


def stride_for_rate(rate_hz: float) -> int:
    """Frame stride that brings a dataset recorded at ``rate_hz`` to about 3 Hz: ``max(round(rate / 3), 1)``."""
    return max(round(rate_hz / TARGET_RATE_HZ), 1)


@dataclass(frozen=True)
class DatasetFormat:
    """How episodes of one dataset are stored and how the paper evaluates on them.

    Attributes:
        name: registry name.
        image_key: the frame array in each file.
        stride: keep every ``stride``-th frame.
        actions: ``per_frame``, ``transitions`` or ``none`` (see the module docstring).
        context_frames, segment_length, clips: the paper's test protocol (T0, frames per clip, test clips);
            None where the paper reports no video-prediction numbers.
        paper: the paper's 64x64 numbers by setting (``action_free`` / ``action_conditioned``) -> metric -> value.
    """

    name: str
    image_key: str = "image"
    stride: int = 1
    actions: str = "per_frame"
    context_frames: int | None = None
    segment_length: int | None = None
    clips: int | None = None
    paper: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.actions not in ACTION_STORAGE:
            raise ValueError(f"action storage {self.actions!r} is not one of {', '.join(ACTION_STORAGE)}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")


_BAIR = DatasetFormat(
    "bair_robot_pushing", image_key="aux1_image", stride=1, actions="per_frame", context_frames=1,
    segment_length=16, clips=256,
    paper={"action_free": {"fvd": 75.0, "psnr": 20.4, "ssim": 82.3, "lpips": 9.5},
           "action_conditioned": {"fvd": 60.8, "psnr": 24.5, "ssim": 90.2, "lpips": 5.0}})
_ROBONET = DatasetFormat(
    "robo_net", image_key="image", stride=1, actions="transitions", context_frames=2, segment_length=12, clips=256,
    paper={"action_conditioned": {"fvd": 63.2, "psnr": 27.8, "ssim": 90.6, "lpips": 4.9}})


def _oxe(name: str, rate_hz: float, image_key: str = "image") -> DatasetFormat:
    return DatasetFormat(name, image_key=image_key, stride=stride_for_rate(rate_hz), actions="none")


FORMATS: dict[str, DatasetFormat] = {
    "bair_robot_pushing": _BAIR,
    "bair": _BAIR,
    "robo_net": _ROBONET,
    # Open X-Embodiment, by control rate (Hz); roboturk (10 Hz) and viola (20 Hz) rates are the OXE overview's
    "fractal20220817_data": _oxe("fractal20220817_data", 3),
    "bridge": _oxe("bridge", 5),
    "kuka": _oxe("kuka", 10),
    "taco_play": _oxe("taco_play", 15, "rgb_static"),
    "language_table": _oxe("language_table", 10, "rgb"),
    "roboturk": _oxe("roboturk", 10, "front_rgb"),
    "viola": _oxe("viola", 20, "agentview_rgb"),
    "bc_z": _oxe("bc_z", 10),
    "stanford_mask_vit": _oxe("stanford_mask_vit", 1),  # no control rate known: stride 1 as the official table
    # our own episodes (python -m mbrl.collect): frames under `image`, one action row per frame
    "metaworld": DatasetFormat("metaworld", image_key="image", stride=1, actions="per_frame"),
    # Something-Something v2 (tokenizer pre-training only): converted to episode files with frames under `image`
    "something_something_v2": DatasetFormat("something_something_v2", image_key="image", stride=1, actions="none"),
}
#: The smaller Open X-Embodiment datasets of the "select" mixture (sharing 0.20 of its weight) by the base step
#: size of the official converter's table (frames under `image` unless FORMATS already names another key).
SMALL_OXE_RATES: dict[str, float] = {
    "jaco_play": 10, "berkeley_cable_routing": 10, "toto": 30, "columbia_cairlab_pusht_real": 10,
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": 20,
    "stanford_hydra_dataset_converted_externally_to_rlds": 10, "austin_buds_dataset_converted_externally_to_rlds": 20,
    "nyu_franka_play_dataset_converted_externally_to_rlds": 3, "maniskill_dataset_converted_externally_to_rlds": 20,
    "furniture_bench_dataset_converted_externally_to_rlds": 10, "ucsd_kitchen_dataset_converted_externally_to_rlds": 2,
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds": 3,
    "austin_sailor_dataset_converted_externally_to_rlds": 20,
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds": 10,
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds": 10,
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds": 10,
    "utokyo_xarm_bimanual_converted_externally_to_rlds": 10, "kaist_nonprehensile_converted_externally_to_rlds": 10,
    "dlr_sara_pour_converted_externally_to_rlds": 10, "dlr_sara_grid_clamp_converted_externally_to_rlds": 10,
    "dlr_edan_shared_control_converted_externally_to_rlds": 5, "asu_table_top_converted_externally_to_rlds": 12.5,
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": 20, "utaustin_mutex": 20,
    "berkeley_fanuc_manipulation": 10, "cmu_playing_with_food": 10, "cmu_play_fusion": 5, "cmu_stretch": 10,
}
FORMATS.update({name: _oxe(name, rate) for name, rate in SMALL_OXE_RATES.items()})
FORMATS["stanford_mask_vit_converted_externally_to_rlds"] = FORMATS["stanford_mask_vit"]


def get_format(name: str) -> DatasetFormat:
    """The registered format of ``name`` (one-line error with the close matches when unknown)."""
    if name in FORMATS:
        return FORMATS[name]
    close = difflib.get_close_matches(name, list(FORMATS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(FORMATS))}"
    raise ValueError(f"unknown dataset {name!r}; {hint}")


def held_out_files(folder: str | Path) -> tuple[list[Path], str]:
    """The test split of a folder of episodes: every 100th ``.npz`` file in sorted order (searched recursively).

    Returns:
        the files and a one-line note of what was chosen (with fewer than 100 files: which one is used).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist; pass data=DIR of episode .npz files")
    files = sorted(folder.rglob("*.npz"))
    if not files:
        raise ValueError(f"no .npz episodes under {folder}; pass data=DIR of episode .npz files")
    chosen = files[::HELD_OUT_EVERY]
    if len(files) < HELD_OUT_EVERY:
        note = (f"only {len(files)} episode files (< {HELD_OUT_EVERY}): the held-out split is the first one, "
                f"{chosen[0].relative_to(folder)}; pass split=all to score every file")
    else:
        note = f"held-out split: {len(chosen)} of {len(files)} files (every {HELD_OUT_EVERY}th in sorted order)"
    return chosen, note


def frames_uint8(array: np.ndarray, file: Path, key: str) -> np.ndarray:
    """Frames (T, H, W, 3) as uint8: integer types with values in [0, 255] are converted (one-line errors)."""
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{file}: {key!r} must be frames (T, H, W, 3), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{file}: {key!r} has dtype {array.dtype}; frames must be integers in [0, 255]")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{file}: {key!r} has values in [{array.min()}, {array.max()}]; frames must be in [0, 255]")
    return array.astype(np.uint8)


def load_clip(file: str | Path, fmt: DatasetFormat, length: int, start: int = 0, with_actions: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """``length`` frames of one episode from frame ``start`` after the format's stride, and their actions.

    Args:
        file: the episode ``.npz``.
        fmt: its dataset format.
        length: frames wanted (after striding).
        start: first frame (after striding).
        with_actions: read the actions (when the format has them).

    Returns:
        frames uint8 (T, H, W, 3) and actions float32 (T, D) (``actions[t]`` taken at frame t), or None when
        not read or the format has none.
    """
    file = Path(file)
    with open_npz(file) as data:
        if fmt.image_key not in data.files:
            raise ValueError(f"{file} has no {fmt.image_key!r} array (it has {', '.join(data.files)}); "
                             f"check dataset={fmt.name}")
        raw = data[fmt.image_key]
        strided = raw[::fmt.stride]
        if len(strided) < start + length:
            raise ValueError(f"{file} has {len(strided)} frames after stride {fmt.stride} (of {len(raw)}), fewer "
                             f"than the {start + length} the segment needs; lower segment_length")
        frames = frames_uint8(strided[start:start + length], file, fmt.image_key)
        actions = _actions(data, file, fmt, len(raw)) if with_actions else None
        if actions is not None:
            actions = actions[::fmt.stride][start:start + length]
    return np.ascontiguousarray(frames), actions


def open_npz(file: str | Path) -> np.lib.npyio.NpzFile:
    """`np.load` of one episode file, with one line naming the file when it is not a readable `.npz` (numpy's own
    message names neither the file nor the fix, and `allow_pickle` stays off)."""
    try:
        data = np.load(file)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{file} is not a readable episode .npz ({' '.join(str(err).split())[:120]}); "
                         "remove it from the folder or record it again") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} holds a single array, not an episode .npz of named arrays; remove it from "  # noqa: TRY004 (bad data, not a bad argument)
                         "the folder")
    return data


def _actions(data: np.lib.npyio.NpzFile, file: Path, fmt: DatasetFormat, frames: int) -> np.ndarray | None:
    """The episode's actions, float32 (T, D), one row per frame (a zero row appended to ``transitions``
    storage); None when the format has none or the file holds none."""
    if fmt.actions == "none" or ACTION_KEY not in data.files:
        return None
    actions = np.asarray(data[ACTION_KEY], dtype=np.float32).reshape(len(data[ACTION_KEY]), -1)
    wanted = frames - 1 if fmt.actions == "transitions" else frames
    if len(actions) != wanted:
        raise ValueError(f"{file}: {ACTION_KEY!r} has {len(actions)} rows for {frames} frames; the "
                         f"{fmt.actions} layout of dataset={fmt.name} needs {wanted}")
    if fmt.actions == "transitions":
        actions = np.concatenate([actions, np.zeros_like(actions[:1])])
    return actions


def load_episode(file: str | Path, fmt: DatasetFormat, with_actions: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A whole episode, not strided: frames uint8 (T, H, W, 3), actions float32 (T, D) (a zero row appended
    to ``transitions`` storage) or None when not read, absent or the format has none, and rewards float32 (T,)
    (``reward``, one per frame) or None when absent."""
    file = Path(file)
    with open_npz(file) as data:
        if fmt.image_key not in data.files:
            raise ValueError(f"{file} has no {fmt.image_key!r} array (it has {', '.join(data.files)}); "
                             f"check dataset={fmt.name}")
        frames = frames_uint8(data[fmt.image_key], file, fmt.image_key)
        actions = _actions(data, file, fmt, len(frames)) if with_actions else None
        rewards = None
        if REWARD_KEY in data.files:
            rewards = np.asarray(data[REWARD_KEY], dtype=np.float32).reshape(-1)
            if len(rewards) != len(frames):
                raise ValueError(f"{file}: {REWARD_KEY!r} has {len(rewards)} rows for {len(frames)} frames; the "
                                 "layout needs one per frame")
    return np.ascontiguousarray(frames), actions, rewards
