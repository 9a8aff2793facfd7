"""An iVideoGPT checkpoint as a VP2 video predictor (the control-centric benchmark's planning interface).

VP2 builds its predictor from a Hydra node with ``_target_`` (``configs/vp2/ivideogpt_predictor.yaml`` names
this class, importable from the installed package: no interface file has to be copied into VP2's tree) and
then, at every CEM / MPPI iteration, calls it with all candidate action sequences at once::

    predictor = VP2Predictor("checkpoints/metaworld-act")           # num_context = 2
    out = predictor({"video": video, "actions": actions})           # video (N, 2, H, W, 3) in [0, 1]
    out["rgb"]                                                      # (N, T, H, W, 3) float32 in [0, 1]

``actions`` is ``(N, T, A)``: ``actions[:, 0]`` is the action that led to the last context frame (VP2 passes
it; it is not used) and ``actions[:, 1:]`` are the planned ones. Frame 0 of the output is the tokenizer's
reconstruction of the last context frame, frame k >= 1 the frame imagined after ``actions[:, k]``: T frames
for T actions. The rollouts go through the model's imagination engine (``IVideoGPT.reset`` / ``step``: KV
cache, compiled and graph-captured on a GPU), ``batch_size`` sequences per batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from core.precision import autocast_to
from core.runtime import derive_seed, pick_device
from world_model.clip_scoring import load_checked_model
from world_model.model import IVideoGPT
from world_model.modes import eval_mode


class VP2Predictor:
    """VP2's predictor interface over an iVideoGPT checkpoint.

    Args:
        pretrained: checkpoint folder in the published layout (``tokenizer/``, ``transformer/``); it must be
            action-conditioned (fine-tuned with actions) for planning.
        context_frames: frames of real video per call (VP2's ``num_context``); at most the checkpoint's T0 (a
            smaller value shortens the tokenizer's context as ``build_model(context_frames=...)`` does).
        temperature, top_k: sampling of the imagined tokens (the paper: 1.0, 100; top_k None: all codes).
        batch_size: sequences imagined per batch; None: all N of a call at once.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        seed: the random stream: batch j of call k samples with ``derive_seed(seed, k, j)``, so a VP2 run is
            reproducible; :meth:`reseed` starts it again.
        precision: the imagination engine's precision (``auto``, ``float32``, ``bfloat16``).
        **extra: other keys of VP2's model config; accepted and ignored (kept in :attr:`ignored`).

    Attributes:
        num_context: context frames VP2 must pass (``context_frames``).
        base_prediction_modality: ``"rgb"``.
        model: the loaded ``IVideoGPT`` (None after :meth:`close`).
    """

    base_prediction_modality = "rgb"

    def __init__(self, pretrained: str, context_frames: int = 2, temperature: float = 1.0,
                 top_k: int | None = 100, batch_size: int | None = None, device: str = "auto", seed: int = 0,
                 precision: str = "auto", **extra: Any) -> None:
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be a positive number of sequences or None (all), got {batch_size!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1 or None (all codes), got {top_k!r}")
        self.device = pick_device(str(device))
        model = load_checked_model(pretrained, self.device, precision)
        if not 1 <= int(context_frames) <= model.context_frames:
            raise ValueError(f"context_frames={context_frames} but the checkpoint {pretrained} takes 1 to "
                             f"{model.context_frames} context frames; pass context_frames<={model.context_frames}")
        if int(context_frames) < model.context_frames:
            model.tokenizer.set_context_length(int(context_frames))
            model = IVideoGPT(model.tokenizer, model.transformer, imagination=model.imaginer.config)
            model = model.to(self.device).eval()
        self.model: IVideoGPT | None = model
        self.pretrained, self.num_context = str(pretrained), int(context_frames)
        self.temperature, self.top_k = float(temperature), None if top_k is None else int(top_k)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.seed, self.calls = int(seed), 0
        self.resolution = int(model.tokenizer.config.resolution)
        self.ignored: dict[str, Any] = dict(extra)

    # -------------------------------------------------------------------------------- interface
    def __call__(self, batch: Mapping[str, Any], **kwargs: Any) -> dict[str, np.ndarray]:
        """Predict the frames of N action sequences.

        Args:
            batch: ``"video"`` (N, T0, H, W, 3) float in [0, 1] (numpy or torch; T0 = :attr:`num_context`)
                and ``"actions"`` (N, T, A); ``actions[:, 0]`` is unused.
            **kwargs: what VP2's planners pass besides the batch (e.g. ``grad_enabled``): ignored (no
                gradients are ever taken).

        Returns:
            ``{"rgb": (N, T, H, W, 3) float32 numpy in [0, 1]}``: the reconstruction of the last context frame,
            then the T - 1 frames imagined under ``actions[:, 1:]``.
        """
        model = self._require_model()
        video, actions = self._inputs(model, batch)
        t = actions.shape[1]
        context = video.permute(0, 1, 4, 2, 3).contiguous()  # (N, T0, 3, H, W)
        recon = self.reconstruct_last(context)
        frames = [recon.unsqueeze(1)]
        if t > 1:
            frames.append(self._imagine(model, context, actions[:, 1:]))
        self.calls += 1
        rgb = torch.cat(frames, dim=1).permute(0, 1, 3, 4, 2)
        return {"rgb": rgb.to("cpu", torch.float32).contiguous().numpy()}

    def reconstruct_last(self, context: torch.Tensor) -> torch.Tensor:
        """The tokenizer's reconstruction of the last context frame: (N, T0, 3, H, W) -> (N, 3, H, W) in [0, 1].

        When every row holds the same context (every candidate starting from the current observation) it is
        encoded and decoded once.
        """
        model = self._require_model()
        last = context[:, -1:]
        same = bool((last == last[:1]).all())
        rows = last[:1] if same else last
        tok = model.tokenizer
        dtype = model.imaginer.config.resolve(self.device).decoder_dtype
        with torch.no_grad(), eval_mode(tok), autocast_to(self.device, dtype):
            recon = tok.decode_context(tok.encode_context(rows))[:, 0].float().clamp(0.0, 1.0)
        return recon.expand(len(context), -1, -1, -1) if same else recon

    def reseed(self, seed: int | None = None) -> None:
        """Start the random stream again (from ``seed`` when given): the next call samples as the first did."""
        if seed is not None:
            self.seed = int(seed)
        self.calls = 0

    def close(self) -> None:
        """Free the imagination engine's buffers and the model; calling the predictor afterwards is an error."""
        if self.model is not None:
            self.model.imaginer.release()
            self.model = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -------------------------------------------------------------------------------- internals
    def _require_model(self) -> IVideoGPT:
        if self.model is None:
            raise RuntimeError("this VP2Predictor was closed; build a new one to predict again")
        return self.model

    @torch.no_grad()
    def _imagine(self, model: IVideoGPT, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(N, T0, 3, H, W) contexts and (N, K, A) actions -> (N, K, 3, H, W) imagined frames."""
        n, horizon = actions.shape[:2]
        step = n if self.batch_size is None else self.batch_size
        out = []
        for j, start in enumerate(range(0, n, step)):
            rows = slice(start, min(start + step, n))
            generator = torch.Generator(self.device).manual_seed(derive_seed(self.seed, self.calls, j))
            model.reset(context[rows], horizon=horizon, temperature=self.temperature, top_k=self.top_k,
                        generator=generator)
            frames = [model.step(actions[rows, k])[0] for k in range(horizon)]
            out.append(torch.stack(frames, dim=1).float())
        return torch.cat(out).clamp_(0.0, 1.0)

    def _inputs(self, model: IVideoGPT, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``video`` (N, T0, H, W, 3) and ``actions`` (N, T, A), float32 on the model's device."""
        if not isinstance(batch, Mapping) or "video" not in batch or "actions" not in batch:
            raise ValueError("the batch must be a dict with 'video' (N, T0, H, W, 3) and 'actions' (N, T, A)")
        video = torch.as_tensor(np.asarray(batch["video"]) if not torch.is_tensor(batch["video"])
                                else batch["video"])
        r, t0 = self.resolution, self.num_context
        if video.dim() != 5 or video.shape[1] != t0 or video.shape[4] != 3 or video.shape[0] < 1:
            raise ValueError(f"batch['video'] must be (N, {t0}, H, W, 3) with N >= 1 (channels last), "
                             f"got {tuple(video.shape)}")
        if tuple(video.shape[2:4]) != (r, r):
            raise ValueError(f"the frames are {video.shape[2]}x{video.shape[3]} but the checkpoint takes {r}x{r} "
                             f"(frames are not resized: that would change what the model sees); render VP2's "
                             f"observations at {r}x{r} or use a checkpoint trained at that size")
        if not video.is_floating_point():
            raise ValueError(f"batch['video'] must be float in [0, 1], got {video.dtype} (divide uint8 by 255)")
        video = video.to(self.device, torch.float32)
        if not bool(torch.isfinite(video).all()) or float(video.min()) < 0.0 or float(video.max()) > 1.0:
            raise ValueError("batch['video'] must hold finite values in [0, 1] (divide uint8 frames by 255)")
        actions = torch.as_tensor(np.asarray(batch["actions"]) if not torch.is_tensor(batch["actions"])
                                  else batch["actions"])
        if model.action_dim is None:
            raise ValueError(f"the checkpoint {self.pretrained} is action-free (no action map), so its predictions "
                             "cannot depend on the planned actions; fine-tune it with actions and load that "
                             "action-conditioned checkpoint")
        a = model.action_dim
        if actions.dim() != 3 or actions.shape[0] != video.shape[0] or actions.shape[1] < 1 or actions.shape[2] != a:
            raise ValueError(f"batch['actions'] must be (N={video.shape[0]}, T >= 1, {a}) for this checkpoint, "
                             f"got {tuple(actions.shape)}")
        actions = actions.to(self.device, torch.float32)
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("batch['actions'] holds NaN or infinite values; check the planner's samples")
        most = model.imaginer.max_horizon
        if actions.shape[1] - 1 > most:
            raise ValueError(f"{actions.shape[1]} actions ask for {actions.shape[1] - 1} imagined frames but this "
                             f"checkpoint can imagine at most {most}; plan with at most {most + 1} actions "
                             "(the previous action plus the planning horizon)")
        return video, actions
