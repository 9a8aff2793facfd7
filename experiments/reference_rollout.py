"""The straightforward rollouts the engine is checked and timed against.

``reference_rollout`` imagines the way the published MBRL code does (``VideoPredictor.rollout``), written
with this project's modules: the context is tokenized with two all-zero frames appended (the official
``tokenize`` call), and every imagined frame starts a fresh ``generate``: the whole growing sequence (context,
earlier frames, the new slot with its action) is re-read from position 0 into a cache made for that call
(``per_call_cache=True``, as Hugging Face ``generate`` does), then the frame's codes are generated token by
token and the frame is decoded. With ``per_call_cache=False`` there is no cache at all: a full forward over
the sequence for every token, the plainest correct decoder (used by the exactness tests).

Where it knowingly differs from the official code, it does so to be the *faster* baseline or to sample the
same tokens as the engine: eval mode (the official code leaves attention dropout on, which sends attention
down a slow path), sampling restricted to the dynamics codes with the engine's sampler and noise, the 17th
token (which the official code samples and throws away) not sampled, and the context's cross-attention
keys/values computed once per rollout (the official code caches the context decoder's features but projects
them again for every frame). The reward is read where the engine reads it, at the frame's last code.

Used by ``experiments/bench_imagination.py`` (run as a script, so this folder is on ``sys.path``) and by the
engine's exactness tests (through ``tests/helpers.py``); it is not part of the installed packages.
"""
from __future__ import annotations

import torch

from core.precision import autocast_to
from world_model.model import IVideoGPT
from world_model.modes import eval_mode
from world_model.sampling import draw_noise, dynamics_logits, noise_width, sample_codes, symexp


@torch.no_grad()
def reference_rollout(model: IVideoGPT, context_frames: torch.Tensor, actions: torch.Tensor | None, horizon: int,
                      temperature: float = 1.0, top_k: int | None = 100, generator: torch.Generator | None = None,
                      per_call_cache: bool = True, autocast: torch.dtype | None = None,
                      decoder_autocast: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Imagine ``horizon`` frames by re-reading the whole sequence for every frame (or every token).

    Consumes ``generator`` exactly as ``Imaginer`` does (one ``(n, B, k)`` exponential draw per imagined frame),
    so with the same seed both sample the same codes.

    Args:
        model: the world model.
        context_frames: (B, T0, 3, H, W) in [0, 1].
        actions: (B, horizon, A) the action taken before each imagined frame; None for an action-free model.
        horizon: imagined frames.
        temperature, top_k, generator: sampling, as in ``Imaginer.reset``.
        per_call_cache: generate each frame's tokens through a cache made for that call (after re-reading the
            prefix), as ``generate()`` does; False: a full forward over the sequence for every token.
        autocast: run under autocast in this dtype (the official rollout uses bfloat16 on GPU).
        decoder_autocast: autocast dtype of the tokenizer calls alone (tokenize, context features, frame
            decoding), e.g. to give them the engine's precision; None: as ``autocast``.

    Returns:
        frames (B, horizon, 3, H, W) in [0, 1], rewards (B, horizon) (None without a reward head) and the
        sampled dynamics codes (B, horizon, n).
    """
    tokenizer, transformer = model.tokenizer, model.transformer
    batch, device = context_frames.shape[0], context_frames.device
    layout = model.layout(horizon)
    n, offset = layout.tokens_per_future_frame, layout.dynamics_offset
    width = noise_width(layout.dynamics_vocab_size, top_k)
    precision = autocast_to(device, autocast)
    frames, rewards, all_codes = [], [], []
    with eval_mode(transformer, tokenizer), precision:
        with_zeros = torch.cat([context_frames, torch.zeros_like(context_frames)], dim=1)
        with autocast_to(device, decoder_autocast):  # else whatever `autocast` set
            ctx_codes, _ = tokenizer.tokenize(with_zeros, layout.context_frames)
            context = tokenizer.context_cache(ctx_codes)
        ids = layout.prefix(ctx_codes)
        slot = torch.full((batch, 1), layout.sdf_id, device=device, dtype=torch.long)
        for t in range(horizon):
            ids = torch.cat([ids, slot], dim=1)
            slots = layout.slot_positions[:t + 1].to(device)
            slot_actions = None if actions is None else actions[:, :t + 1]
            noise = None if temperature <= 0 else draw_noise((n, batch, width), generator, device)
            if per_call_cache:
                cache = transformer.new_cache(batch, ids.shape[1] + n)
                hidden = transformer(ids, slot_actions, slots, return_logits=False, cache=cache).hidden[:, -1]
                pos = torch.tensor(ids.shape[1], device=device)
            codes = []
            for i in range(n + 1):
                if not per_call_cache:
                    hidden = transformer(ids, slot_actions, slots, return_logits=False).hidden[:, -1]
                if i == n:
                    break
                code = sample_codes(dynamics_logits(transformer, hidden, layout), None if noise is None else noise[i],
                                    temperature, top_k)
                codes.append(code)
                ids = torch.cat([ids, (code + offset).unsqueeze(1)], dim=1)
                if per_call_cache:
                    hidden = transformer.decode_hidden(ids[:, -1:], pos, cache)
                    pos += 1
            codes_t = torch.stack(codes, dim=1)
            reward = transformer.rewards(hidden)
            rewards.append(None if reward is None else symexp(reward.float()))
            with autocast_to(device, decoder_autocast):  # else whatever `autocast` set
                frame = tokenizer.decode_future(codes_t.unsqueeze(1), context)[:, 0]
            frames.append(frame.float().clamp(0.0, 1.0))
            all_codes.append(codes_t)
    reward_out = None if rewards[0] is None else torch.stack(rewards, dim=1)
    return torch.stack(frames, dim=1), reward_out, torch.stack(all_codes, dim=1)
