"""world_model.vp2.VP2Predictor against VP2's predictor interface: shapes, dtype and range, the reconstructed
first frame, the unused first action, extra keyword arguments, close(), instantiation from the YAML, and
one-line errors for bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import checkpoint_folder
from hydra.utils import instantiate
from omegaconf import OmegaConf

from world_model.model import IVideoGPT
from world_model.vp2 import VP2Predictor

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "configs" / "vp2" / "ivideogpt_predictor.yaml"


@pytest.fixture(scope="module")
def act_ckpt(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint with its non-zero action map (4-d actions), T0 = 2, 64x64."""
    return checkpoint_folder(tmp_path_factory.mktemp("vp2") / "act", tiny_checkpoint, "transformer_with_heads")


@pytest.fixture(scope="module")
def predictor(act_ckpt) -> VP2Predictor:
    return VP2Predictor(str(act_ckpt), device="cpu")


@pytest.fixture(scope="module")
def batch(tiny_checkpoint) -> dict[str, np.ndarray]:
    """VP2's layout: video (N=3, 2, 64, 64, 3) float in [0, 1], actions (3, T=4, 4)."""
    data = np.load(tiny_checkpoint / "fixture.npz")
    frames = data["frames"].transpose(0, 1, 3, 4, 2)  # (2, 6, 64, 64, 3)
    video = np.concatenate([frames[:, 0:2], frames[:1, 2:4]])
    actions = np.concatenate([data["actions"][:, :4], data["actions"][:1, 2:6]]).astype(np.float32)
    return {"video": video.astype(np.float32), "actions": actions}


def call(predictor: VP2Predictor, batch: dict[str, np.ndarray], **kwargs) -> np.ndarray:
    predictor.reseed()
    return predictor(batch, **kwargs)["rgb"]


def test_output_follows_the_interface(predictor, batch):
    assert predictor.num_context == 2 and predictor.base_prediction_modality == "rgb"
    rgb = call(predictor, batch, grad_enabled=False, anything="else")  # VP2's extra keywords are ignored
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.float32
    assert rgb.shape == (3, 4, 64, 64, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert not np.allclose(rgb[:, 1], rgb[:, 0])  # imagined frames follow the reconstruction


def test_first_frame_is_the_reconstruction_of_the_last_context_frame(predictor, batch, act_ckpt):
    rgb = call(predictor, batch)
    model = IVideoGPT.from_pretrained(act_ckpt)
    context = torch.from_numpy(batch["video"]).permute(0, 1, 4, 2, 3)
    segment = torch.cat([context, context[:, -1:]], dim=1)  # one future frame so that tokenize() takes it
    recon = model.detokenize(model.tokenize(segment)[0])[:, 1].clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(rgb[:, 0], recon, atol=1e-5)
    # a batch of one repeated context (as VP2 sends it) is reconstructed once and matches row by row
    same = {"video": np.repeat(batch["video"][:1], 3, axis=0), "actions": batch["actions"]}
    np.testing.assert_allclose(call(predictor, same)[:, 0], np.repeat(recon[:1], 3, axis=0), atol=1e-5)


def test_the_first_action_is_unused_and_the_second_is_used(predictor, batch):
    base = call(predictor, batch)
    np.testing.assert_array_equal(base, call(predictor, batch))  # same seed, same output
    first = {**batch, "actions": batch["actions"].copy()}
    first["actions"][:, 0] += 0.7
    np.testing.assert_array_equal(call(predictor, first), base)
    second = {**batch, "actions": batch["actions"].copy()}
    second["actions"][:, 1] += 0.7
    changed = call(predictor, second)
    np.testing.assert_array_equal(changed[:, 0], base[:, 0])
    assert not np.array_equal(changed[:, 1:], base[:, 1:])


def test_chunks_and_torch_inputs_give_the_same_shapes(act_ckpt, batch):
    chunked = VP2Predictor(str(act_ckpt), device="cpu", batch_size=2, top_k=None, precision="float32")
    rgb = chunked({"video": torch.from_numpy(batch["video"]), "actions": torch.from_numpy(batch["actions"])})["rgb"]
    assert rgb.shape == (3, 4, 64, 64, 3) and rgb.dtype == np.float32
    one = chunked({"video": batch["video"], "actions": batch["actions"][:, :1]})["rgb"]  # T = 1: no imagination
    assert one.shape == (3, 1, 64, 64, 3)


def test_fewer_context_frames_shorten_the_tokenizer(act_ckpt, batch):
    short = VP2Predictor(str(act_ckpt), device="cpu", context_frames=1)
    assert short.num_context == 1 and short.model.context_frames == 1
    rgb = short({"video": batch["video"][:, 1:], "actions": batch["actions"]})["rgb"]
    assert rgb.shape == (3, 4, 64, 64, 3)


def test_close_frees_the_model(act_ckpt, batch):
    closing = VP2Predictor(str(act_ckpt), device="cpu")
    closing(batch)
    closing.close()
    closing.close()  # twice is fine
    assert closing.model is None
    with pytest.raises(RuntimeError, match="closed"):
        closing(batch)


def test_instantiates_from_the_yaml_with_hydra(act_ckpt, batch):
    cfg = OmegaConf.load(YAML)
    assert cfg._target_ == "world_model.vp2.VP2Predictor"
    made = instantiate(cfg, pretrained=str(act_ckpt), device="cpu", vp2_only_key=1)
    assert isinstance(made, VP2Predictor) and made.num_context == 2 and made.top_k == 100
    assert made.ignored == {"vp2_only_key": 1}
    assert made(batch)["rgb"].shape == (3, 4, 64, 64, 3)
    made.close()


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_input_is_one_line(predictor, batch, tiny_checkpoint, tmp_path):
    cases = [
        ({**batch, "video": batch["video"][:, :1]}, "must be (N, 2, H, W, 3)"),
        ({**batch, "video": batch["video"].transpose(0, 1, 4, 2, 3)}, "must be (N, 2, H, W, 3)"),
        ({**batch, "video": batch["video"][:, :, :32, :32]}, "render VP2's observations at 64x64"),
        ({**batch, "video": (batch["video"] * 255).astype(np.uint8)}, "divide uint8 by 255"),
        ({**batch, "video": batch["video"] * 255}, "in [0, 1]"),
        ({**batch, "actions": batch["actions"][:2]}, "must be (N=3, T >= 1, 4)"),
        ({**batch, "actions": batch["actions"][..., :3]}, "must be (N=3, T >= 1, 4)"),
        ({**batch, "actions": np.full((3, 4, 4), np.nan, np.float32)}, "NaN"),
        ({**batch, "actions": np.zeros((3, 32, 4), np.float32)}, "at most 30; plan with at most 31 actions"),
        ({"video": batch["video"]}, "'actions'"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError) as err:
            predictor(bad)
        assert message in one_line(err), message
    free = VP2Predictor(str(checkpoint_folder(tmp_path / "free", tiny_checkpoint, "transformer")), device="cpu")
    with pytest.raises(ValueError) as err:
        free(batch)
    assert "action-free" in one_line(err) and "fine-tune it with actions" in one_line(err)
    for kwargs, message in (({"context_frames": 3}, "context_frames<=2"), ({"batch_size": 0}, "batch_size"),
                            ({"top_k": 0}, "top_k"), ({"temperature": 0.0}, "temperature"),
                            ({"precision": "fp8"}, "precision")):
        with pytest.raises(ValueError) as err:
            VP2Predictor(str(tmp_path / "free"), device="cpu", **kwargs)
        assert message in one_line(err), message
    with pytest.raises(FileNotFoundError):
        VP2Predictor(str(tmp_path / "missing"), device="cpu")
