"""python -m world_model.evaluate, world_model.fvd and world_model.data.formats: dataset formats, the I3D call,
an end-to-end evaluation of the tiny checkpoint, best-of-N bookkeeping, resuming and one-line errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED, checkpoint_folder, read_csv

from world_model import evaluate as evaluate_module
from world_model.data.formats import FORMATS, get_format, held_out_files, load_clip, stride_for_rate
from world_model.evaluate import main
from world_model.fvd import I3DFeatures
from world_model.metrics import frechet_distance

BAIR_SAMPLE = SHARED / "reference" / "datasets" / "bair_sample.npz"


class StandInI3D(torch.nn.Module):
    """Checks the StyleGAN-V detector's calling convention; features: per-frame channel means and the std."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert rescale and resize and return_features, "call with rescale=True, resize=True, return_features=True"
        assert x.dim() == 5 and x.shape[1] == 3, "videos must be (B, 3, T, H, W)"
        assert x.dtype == torch.float32, "videos must be float32"
        assert float(x.min()) >= 0.0 and float(x.max()) <= 255.0, "values must be in [0, 255]"
        assert float(x.max()) > 2.0, "values look like [0, 1], not [0, 255]"
        return torch.cat([x.mean(dim=(3, 4)).flatten(1), x.std(dim=(2, 3, 4))], dim=1) / 255.0


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(StandInI3D()).save(str(path))
    return path


@pytest.fixture(scope="module")
def episodes(tmp_path_factory, tiny_checkpoint) -> Path:
    """Three 12-frame episodes (uint8 `image`, 4-d `action` per frame) made of the fixture videos."""
    folder = tmp_path_factory.mktemp("episodes")
    data = np.load(tiny_checkpoint / "fixture.npz")
    frames = (data["frames"] * 255).round().astype(np.uint8).transpose(0, 1, 3, 4, 2)
    for i in range(3):
        video = np.concatenate([frames[i % 2], frames[(i + 1) % 2]])
        np.savez_compressed(folder / f"ep{i:03d}.npz", image=video, action=np.tile(data["actions"][i % 2], (2, 1)))
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint, action-conditioned (4-d actions), T0 = 2, 64x64."""
    return checkpoint_folder(tmp_path_factory.mktemp("ck") / "act", tiny_checkpoint, "transformer_with_heads")


def run(ckpt: Path, episodes: Path, out: Path, *extra: str) -> int:
    return main([f"checkpoint={ckpt}", f"data={episodes}", f"out={out}", "dataset=metaworld", "segment_length=6",
                 "samples=3", "split=all", "progress_bar=false", "num_threads=1", *extra])


# ------------------------------------------------------------------------------------------- formats
def test_format_registry():
    assert get_format("bair") is get_format("bair_robot_pushing")
    assert (FORMATS["bair"].image_key, FORMATS["bair"].context_frames, FORMATS["bair"].segment_length) == \
        ("aux1_image", 1, 16)
    assert (FORMATS["robo_net"].actions, FORMATS["robo_net"].context_frames, FORMATS["robo_net"].segment_length) == \
        ("transitions", 2, 12)
    strides = {n: FORMATS[n].stride for n in ("fractal20220817_data", "bridge", "kuka", "taco_play", "language_table")}
    assert strides == {"fractal20220817_data": 1, "bridge": 2, "kuka": 3, "taco_play": 5, "language_table": 3}
    assert (FORMATS["taco_play"].image_key, FORMATS["language_table"].image_key, FORMATS["roboturk"].image_key,
            FORMATS["viola"].image_key, FORMATS["metaworld"].image_key) == \
        ("rgb_static", "rgb", "front_rgb", "agentview_rgb", "image")
    assert stride_for_rate(1) == 1
    with pytest.raises(ValueError, match="unknown dataset 'bair_pushing'; did you mean bair_robot_pushing"):
        get_format("bair_pushing")


def test_real_bair_episode_loads_as_uint8_with_float32_actions():
    if not BAIR_SAMPLE.is_file():
        pytest.skip(f"BAIR sample not found at {BAIR_SAMPLE}")
    frames, actions = load_clip(BAIR_SAMPLE, get_format("bair"), 16)
    raw = np.load(BAIR_SAMPLE)
    assert frames.dtype == np.uint8 and frames.shape == (16, 64, 64, 3)
    assert np.array_equal(frames, raw["aux1_image"][:16])
    assert actions.dtype == np.float32 and np.allclose(actions, raw["action"][:16])
    with pytest.raises(ValueError, match="fewer than the 31 the segment needs"):
        load_clip(BAIR_SAMPLE, get_format("bair"), 31)


def test_transitions_get_a_zero_row_and_stride_applies(tmp_path):
    video = np.arange(10 * 4 * 4 * 3).reshape(10, 4, 4, 3).astype(np.uint8)
    np.savez_compressed(tmp_path / "a.npz", image=video, action=np.ones((9, 2)))
    frames, actions = load_clip(tmp_path / "a.npz", get_format("robo_net"), 10)
    assert actions.shape == (10, 2) and np.all(actions[:9] == 1) and np.all(actions[9] == 0)
    frames, actions = load_clip(tmp_path / "a.npz", get_format("kuka"), 3)  # stride 3, no actions
    assert np.array_equal(frames, video[::3][:3]) and actions is None
    with pytest.raises(ValueError, match=r"has no 'rgb_static' array \(it has image, action\)"):
        load_clip(tmp_path / "a.npz", get_format("taco_play"), 3)


def test_held_out_split_is_every_100th_sorted_file(tmp_path):
    for i in range(250):
        (tmp_path / f"{i:04d}.npz").touch()
    files, note = held_out_files(tmp_path)
    assert [f.name for f in files] == ["0000.npz", "0100.npz", "0200.npz"]
    assert "3 of 250" in note
    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        (few / f"{i}.npz").touch()
    files, note = held_out_files(few)
    assert [f.name for f in files] == ["0.npz"] and "0.npz" in note


# ----------------------------------------------------------------------------------------------- FVD
def test_i3d_is_called_with_the_documented_layout(i3d_file):
    videos = torch.rand(3, 6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    features = I3DFeatures(i3d_file, batch=2)(videos)
    expected = StandInI3D()(videos.permute(0, 2, 1, 3, 4) * 255.0, rescale=True, resize=True, return_features=True)
    assert features.shape == (3, 3 * 6 + 3)
    assert torch.allclose(features, expected, atol=1e-6)


def test_a_file_that_is_not_torchscript_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model" * 10)
    for name in ("plain.pt", "junk.pt"):
        with pytest.raises(ValueError, match="is not a TorchScript file") as err:
            I3DFeatures(tmp_path / name)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 3 clips: a rank-deficient covariance
def test_end_to_end_with_best_of_n_and_fvd(ckpt, episodes, i3d_file, tmp_path):
    out = tmp_path / "out"
    assert run(ckpt, episodes, out, f"fvd.i3d={i3d_file}") == 0
    for name in ("metrics.json", "report.md", "clips.csv", "samples.csv", "samples.gif", "config.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["clips"] == 3 and summary["samples"] == 3 and summary["setting"] == "action_conditioned"
    samples = read_csv(out / "samples.csv")
    assert len(samples) == 9
    for scope, key in (("all", "all_frames"), ("pred", "predicted_frames")):
        for metric, higher in (("psnr", True), ("ssim", True), ("mse", False)):
            per_clip = []
            for clip in range(3):
                values = [float(r[f"{metric}_{scope}"]) for r in samples if int(r["clip"]) == clip]
                per_clip.append(max(values) if higher else min(values))
            assert summary[key][metric] == pytest.approx(np.mean(per_clip), rel=1e-12)
    assert summary["headline"]["psnr"] == summary["all_frames"]["psnr"]
    assert summary["all_frames"]["psnr"] != summary["predicted_frames"]["psnr"]
    feats = [np.load(out / "features" / f"clip_{i:05d}.npz") for i in range(3)]
    assert feats[0]["generated"].shape == (3, 3 * 6 + 3)  # all 6 frames scored by FVD
    expected = frechet_distance(np.concatenate([f["real"] for f in feats]),
                                np.concatenate([f["generated"] for f in feats]))
    assert summary["fvd"] == pytest.approx(expected, rel=1e-9)
    report = (out / "report.md").read_text()
    assert "| psnr |" in report and "predicted frames" in report


def test_resume_skips_finished_clips_and_matches_one_run(ckpt, episodes, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(ckpt, episodes, full) == 0
    assert run(ckpt, episodes, part, "clips=2") == 0
    # a run killed after clip 2's samples but before its clips.csv row left stray sample rows
    with open(part / "samples.csv", "a") as f:
        f.write("2,0,1,1,1,1,1,1\n")
    scored = []
    original = evaluate_module.ClipScorer.score

    def counting(self, clip_index, frames, actions):
        scored.append(clip_index)
        return original(self, clip_index, frames, actions)

    monkeypatch.setattr(evaluate_module.ClipScorer, "score", counting)
    assert run(ckpt, episodes, part, "clips=3") == 0
    assert scored == [2]
    assert read_csv(part / "clips.csv") == read_csv(full / "clips.csv")
    assert read_csv(part / "samples.csv") == read_csv(full / "samples.csv")
    assert json.loads((part / "metrics.json").read_text())["all_frames"] == \
        json.loads((full / "metrics.json").read_text())["all_frames"]
    assert run(ckpt, episodes, part, "clips=3", "seed=1") == 2  # other settings: refused


def test_score_context_false_heads_with_predicted_frames(ckpt, episodes, tmp_path):
    assert run(ckpt, episodes, tmp_path / "o", "score_context=false", "clips=1", "batch=2") == 0  # 2 resets
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert summary["headline_frames"] == "predicted_frames"
    assert summary["headline"]["ssim"] == summary["predicted_frames"]["ssim"]


# --------------------------------------------------------------------------------------------- errors
def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_requests_fail_with_one_line(ckpt, episodes, tiny_checkpoint, tmp_path, capsys):
    assert "did you mean bair" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "a", "dataset=bair_robot"))
    assert "has no 'aux1_image' array (it has image, action)" in one_line_error(
        capsys, run(ckpt, episodes, tmp_path / "b", "dataset=bair", "context_frames=2"))
    assert "fewer than the 20" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "c", "segment_length=20"))
    assert "context_frames=2" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "d", "context_frames=1"))
    assert "can imagine 1 to 30" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "e", "segment_length=40"))
    assert "takes 64x64" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "f", "image_size=128"))
    assert "action-conditioned" in one_line_error(
        capsys, run(ckpt, episodes, tmp_path / "g", "action_conditioned=false"))
    free = checkpoint_folder(tmp_path / "free", tiny_checkpoint, "transformer")
    assert "action-free" in one_line_error(capsys, run(free, episodes, tmp_path / "h", "action_conditioned=true"))
    assert "lpips=" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "i", f"lpips={tmp_path}"))
    assert "unknown argument" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "j", "sample=3"))
    assert "precision=" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "k", "precision=fp16"))
    assert "samples and batch" in one_line_error(capsys, run(ckpt, episodes, tmp_path / "l", "samples=0"))


def test_damaged_checkpoint_names_the_file(tiny_checkpoint, episodes, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint / "tokenizer", broken / "tokenizer")
    shutil.copytree(tiny_checkpoint / "transformer_with_heads", broken / "transformer")
    weights = broken / "transformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    err = one_line_error(capsys, run(broken, episodes, tmp_path / "o"))
    assert str(weights) in err and "damaged" in err


def test_action_free_checkpoint_runs_without_actions(tiny_checkpoint, episodes, tmp_path):
    free = checkpoint_folder(tmp_path / "free", tiny_checkpoint, "transformer")
    assert run(free, episodes, tmp_path / "o", "clips=1") == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["setting"] == "action_free"


def test_bair_protocol_on_the_real_bair_episode(tiny_checkpoint, tmp_path):
    """dataset=bair defaults (T0 = 1, 16 frames, aux1_image int64, float64 actions) on the real test episode,
    with a T0 = 1 version of the tiny checkpoint."""
    if not BAIR_SAMPLE.is_file():
        pytest.skip(f"BAIR sample not found at {BAIR_SAMPLE}")
    from world_model.model import IVideoGPT

    model = IVideoGPT.from_pretrained(checkpoint_folder(tmp_path / "src", tiny_checkpoint, "transformer_with_heads"))
    model.tokenizer.set_context_length(1)
    IVideoGPT(model.tokenizer, model.transformer).save_pretrained(tmp_path / "bair_ck")
    (tmp_path / "data").mkdir()
    shutil.copy(BAIR_SAMPLE, tmp_path / "data" / "traj_0.npz")
    out = tmp_path / "out"
    assert main([f"checkpoint={tmp_path / 'bair_ck'}", f"data={tmp_path / 'data'}", f"out={out}", "dataset=bair",
                 "samples=2", "progress_bar=false", "num_threads=1"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert (summary["context_frames"], summary["segment_length"], summary["clips"]) == (1, 16, 1)
    assert summary["setting"] == "action_conditioned"
    assert any("traj_0.npz" in note for note in summary["notes"])  # fewer than 100 files: says which it uses
    assert "| psnr |" in (out / "report.md").read_text() and "| 24.5 |" in (out / "report.md").read_text()


def test_lpips_is_scored_and_best_is_the_minimum(ckpt, episodes, tmp_path):
    from world_model.lpips import LPIPS

    torch.manual_seed(0)
    net = LPIPS()
    for p in net.parameters():
        p.data.normal_(0, 0.05).abs_()
    weights = tmp_path / "lpips"
    weights.mkdir()
    torch.save({f"features.{k}": v for k, v in net.net.features.state_dict().items()}, weights / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(net.lins)}, weights / "vgg.pth")
    out = tmp_path / "out"
    assert run(ckpt, episodes, out, f"lpips={weights}", "clips=1") == 0
    values = [float(r["lpips_all"]) for r in read_csv(out / "samples.csv")]
    assert len(values) == 3 and min(values) > 0
    assert float(read_csv(out / "clips.csv")[0]["lpips_all"]) == min(values)
    assert json.loads((out / "metrics.json").read_text())["headline"]["lpips"] == pytest.approx(min(values))
