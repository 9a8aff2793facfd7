"""Replay for pixel RL: each frame stored once (uint8) in a preallocated ring; stacks built at sampling.

Storage is per *time step*: slot i holds the frame of step i, the action and reward of the transition *into*
it (zeros for an episode's first frame), the success flag of that transition, and the absolute index of its
episode's first frame. Memory is bounded by `capacity` (steps): about one frame plus 29 bytes per step
(`nbytes`, `bytes_per_step`); `np.zeros` lets the OS commit pages only as they are written.

Sampling (`sample`) follows DrQ-v2: a transition starting at frame j is drawn uniformly among those whose
whole n-step window lies inside one stored episode (j + nstep <= the episode's last frame), so every sample
has a full n-step return `sum_k discount^k r_{j+1+k}` and bootstrap discount `discount^nstep` (Meta-World
never terminates, so the discount is never 0). The last nstep - 1 transitions of an episode are therefore
never the *first* step of a sample; they still enter the returns of earlier samples. (DrQ-v2 draws an
episode, then a step in it: the same distribution for Meta-World's equal-length episodes.) Frame stacks are
rebuilt from the stored frames, repeating an episode's first frame before its start, exactly like
`MetaWorldPixelEnv.reset` fills its stack.

Segments (`sample_segments`) follow the official convention: `frames[k]`, `actions[k]` = the action taken at
`frames[k]`, `rewards[k]` = the reward of the transition out of `frames[k]`; a segment never crosses an
episode boundary and its last action/reward (which lead out of it) are real, so the step after the
segment's last frame is stored too.

When the ring wraps, the oldest episode loses its first frames; samples whose frames (stack included) were
overwritten are rejected. All randomness comes from one `numpy.random.Generator` that is part of
`state_dict()`, so a resumed run draws the same next batch.
"""

from __future__ import annotations

import numpy as np
import torch

from core.batch import SegmentBatch, TransitionBatch

# Rejection sampling redraws only the invalid candidates; with >= 1 valid start this ends quickly, the cap
# only guards against a bug looping forever.
_MAX_REJECTION_ROUNDS = 1000


class ReplayBuffer:
    """Ring buffer of episodes of uint8 frames; samples n-step transitions and video segments.

    Args:
        capacity: number of time steps (frames) kept; older ones are overwritten.
        frame_shape: `(C, H, W)` of one frame.
        action_dim: size of the action vector.
        frame_stack: frames per observation in `sample`.
        nstep: n of the n-step return.
        discount: per-step discount of the n-step return.
        seed: seed of the buffer's sampling generator.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int, int],
        action_dim: int,
        frame_stack: int = 3,
        nstep: int = 3,
        discount: float = 0.99,
        seed: int = 0,
    ) -> None:
        if capacity < 2 or frame_stack < 1 or nstep < 1:
            raise ValueError(
                f"need capacity >= 2, frame_stack >= 1, nstep >= 1; got {capacity}, {frame_stack}, {nstep}"
            )
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.action_dim = int(action_dim)
        self.frame_stack = int(frame_stack)
        self.nstep = int(nstep)
        self.discount = float(discount)
        self.rng = np.random.default_rng(seed)

        self._frames = np.zeros((self.capacity, *self.frame_shape), dtype=np.uint8)
        self._actions = np.zeros((self.capacity, self.action_dim), dtype=np.float32)
        self._rewards = np.zeros(self.capacity, dtype=np.float32)
        self._successes = np.zeros(self.capacity, dtype=bool)
        # Absolute index (counting every frame ever added) of the first frame of each slot's episode.
        self._episode_start = np.zeros(self.capacity, dtype=np.int64)
        self._total = 0  # frames ever added; the next frame gets absolute index _total
        self._num_first_frames = 0  # stored frames that start an episode (for len() in O(1))
        self._open_episode = False
        self._discount_powers = self.discount ** np.arange(self.nstep)

    # ----------------------------------------------------------------------------------------- writing
    def add_first(self, frame: np.ndarray) -> None:
        """Start an episode with its first frame `(C, H, W)` uint8 (an unfinished previous one is closed)."""
        self._write(self._total, self._total, frame, np.zeros(self.action_dim, np.float32), 0.0, False)
        self._open_episode = True

    def add(
        self, action: np.ndarray, reward: float, frame: np.ndarray, success: bool = False, last: bool = False
    ) -> None:
        """Append a step: the `action` taken at the previous frame, its `reward`, and the new `frame`."""
        if not self._open_episode:
            raise RuntimeError("add() needs an open episode: call add_first(frame) first")
        start = int(self._episode_start[(self._total - 1) % self.capacity])
        if self._total - start >= self.capacity:
            raise ValueError(
                f"an episode longer than the buffer capacity ({self.capacity} steps); raise the capacity"
            )
        self._write(self._total, start, frame, action, reward, success)
        self._open_episode = not last

    def add_episode(
        self,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        successes: np.ndarray | None = None,
    ) -> None:
        """Append a whole episode (demonstrations, imagined data) in one vectorised write.

        Args:
            frames: uint8 `(T+1, C, H, W)`; actions `(T, A)` (`actions[t]` taken at `frames[t]`);
            rewards `(T,)` (of the transition out of `frames[t]`); successes `(T,)` bool or None.
        """
        frames = np.asarray(frames)
        steps = len(frames) - 1
        actions = np.asarray(actions, dtype=np.float32).reshape(steps, self.action_dim)
        rewards = np.asarray(rewards, dtype=np.float32).reshape(steps)
        successes = np.zeros(steps, bool) if successes is None else np.asarray(successes, bool).reshape(steps)
        if steps < 1 or frames.shape[1:] != self.frame_shape:
            raise ValueError(
                f"frames must be (T+1, {', '.join(map(str, self.frame_shape))}) with T >= 1, "
                f"got {frames.shape}"
            )
        if steps + 1 > self.capacity:
            raise ValueError(
                f"an episode of {steps + 1} frames does not fit a buffer of capacity {self.capacity}"
            )
        start = self._total
        index = start + np.arange(steps + 1)
        zero = np.zeros((1,), np.float32)
        self._write(
            index,
            start,
            frames,
            np.concatenate([np.zeros((1, self.action_dim), np.float32), actions]),
            np.concatenate([zero, rewards]),
            np.concatenate([[False], successes]),
        )
        self._open_episode = False

    def _write(self, index, start, frame, action, reward, success) -> None:
        if np.shape(frame)[-3:] != self.frame_shape or np.asarray(frame).dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 {self.frame_shape}, got {np.asarray(frame).dtype} {np.shape(frame)}"
            )
        index = np.asarray(index)
        slot = index % self.capacity
        overwritten = index - self.capacity
        self._num_first_frames -= int(
            np.count_nonzero((overwritten >= 0) & (self._episode_start[slot] == overwritten))
        )
        self._num_first_frames += int(np.count_nonzero(index == start))
        self._frames[slot] = frame
        self._actions[slot] = action
        self._rewards[slot] = reward
        self._successes[slot] = success
        self._episode_start[slot] = start
        self._total = int(np.max(index)) + 1

    # ----------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        """Stored transitions (pairs of consecutive frames of one episode)."""
        if self._total == 0:
            return 0
        # The oldest stored frame has no stored predecessor even when it is not an episode's first frame.
        oldest_cut = int(self._episode_start[self._oldest % self.capacity] != self._oldest)
        return self.num_frames - self._num_first_frames - oldest_cut

    @property
    def num_frames(self) -> int:
        """Frames currently stored (<= capacity)."""
        return self._total - self._oldest

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage."""
        return sum(a.nbytes for a in self._arrays().values())

    @property
    def bytes_per_step(self) -> float:
        return self.nbytes / self.capacity

    @property
    def _oldest(self) -> int:
        return max(0, self._total - self.capacity)

    def _valid_starts(self, start: np.ndarray, ahead: int, history: int) -> np.ndarray:
        """Which absolute indices `start` begin a window of `ahead` further frames in the same episode whose
        frames, with `history` stack frames before `start` (clamped to the episode start), are stored."""
        end = start + ahead
        ok = end < self._total
        episode = self._episode_start[start % self.capacity]
        ok &= self._episode_start[np.minimum(end, self._total - 1) % self.capacity] == episode
        ok &= np.maximum(start - history, episode) >= self._oldest
        return ok

    def _draw_starts(
        self, batch_size: int, ahead: int, history: int, generator: np.random.Generator | None
    ) -> np.ndarray:
        rng = self.rng if generator is None else generator
        low, high = self._oldest, self._total - ahead
        if high <= low:
            raise ValueError(f"the buffer holds {self.num_frames} frames: too few for windows of {ahead + 1}")
        start = rng.integers(low, high, size=batch_size)
        for _ in range(_MAX_REJECTION_ROUNDS):
            bad = ~self._valid_starts(start, ahead, history)
            if not bad.any():
                return start
            start[bad] = rng.integers(low, high, size=int(bad.sum()))
        raise ValueError(f"no stored episode has {ahead + 1} consecutive frames; add longer episodes first")

    def _stacked(self, index: np.ndarray) -> np.ndarray:
        """Observations ending at absolute `index` (B,): uint8 (B, S*C, H, W), first frame repeated before
        the episode start."""
        offsets = np.arange(1 - self.frame_stack, 1)
        episode = self._episode_start[index % self.capacity]
        frame_index = np.maximum(index[:, None] + offsets, episode[:, None])
        # np.take is markedly faster than fancy indexing for gathering whole frames.
        stacked = np.take(self._frames, frame_index % self.capacity, axis=0)  # (B, S, C, H, W)
        return stacked.reshape(len(index), -1, *self.frame_shape[1:])

    def sample(self, batch_size: int, generator: np.random.Generator | None = None) -> TransitionBatch:
        """`batch_size` n-step transitions, uniformly over those with a full n-step window (DrQ-v2)."""
        start = self._draw_starts(batch_size, self.nstep, self.frame_stack - 1, generator)
        step_slots = (start[:, None] + np.arange(1, self.nstep + 1)) % self.capacity  # (B, n)
        reward = self._rewards[step_slots] @ self._discount_powers.astype(np.float32)
        discount = np.full((batch_size, 1), self.discount**self.nstep, dtype=np.float32)
        return TransitionBatch(
            obs=torch.from_numpy(self._stacked(start)),
            action=torch.from_numpy(self._actions[step_slots[:, 0]]),
            reward=torch.from_numpy(reward.astype(np.float32)[:, None]),
            discount=torch.from_numpy(discount),
            next_obs=torch.from_numpy(self._stacked(start + self.nstep)),
        )

    def sample_segments(
        self, batch_size: int, length: int, generator: np.random.Generator | None = None
    ) -> SegmentBatch:
        """`batch_size` segments of `length` frames within single episodes (official convention).

        Returns:
            frames uint8 `(B, T, C, H, W)`, actions `(B, T, A)`, rewards `(B, T)`.
        """
        if length < 1:
            raise ValueError(f"segment length must be >= 1, got {length}")
        return self._segments_at(self._draw_starts(batch_size, length, 0, generator), length)

    def sample_recent_segments(
        self, batch_size: int, length: int, window: int, generator: np.random.Generator
    ) -> SegmentBatch | None:
        """Like `sample_segments`, but every segment lies among the newest `window` stored frames (validation on
        the latest episodes, which the agent has trained on least). None when no segment fits there."""
        if length < 1:
            raise ValueError(f"segment length must be >= 1, got {length}")
        low, high = max(self._total - window, self._oldest), self._total - length
        if high <= low:
            return None
        starts = np.arange(low, high)
        starts = starts[self._valid_starts(starts, length, 0)]
        if len(starts) == 0:
            return None
        return self._segments_at(generator.choice(starts, size=batch_size), length)

    def _segments_at(self, start: np.ndarray, length: int) -> SegmentBatch:
        frame_slots = (start[:, None] + np.arange(length)) % self.capacity  # (B, T)
        next_slots = (frame_slots + 1) % self.capacity  # actions/rewards are stored on the frame they lead to
        return SegmentBatch(
            frames=torch.from_numpy(np.take(self._frames, frame_slots, axis=0)),
            actions=torch.from_numpy(self._actions[next_slots]),
            rewards=torch.from_numpy(self._rewards[next_slots]),
        )

    # ------------------------------------------------------------------------------------ checkpointing
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "frames": self._frames,
            "actions": self._actions,
            "rewards": self._rewards,
            "successes": self._successes,
            "episode_start": self._episode_start,
        }

    def state_dict(self) -> dict:
        """Contents (only the filled slots), counters and the sampling generator's state.

        Arrays are returned as torch tensors sharing memory with the buffer, so that `torch.save` then
        `torch.load(..., weights_only=True)` round-trips them.
        """
        filled = min(self._total, self.capacity)
        state = {name: torch.from_numpy(array[:filled]) for name, array in self._arrays().items()}
        state.update(
            total=self._total,
            open_episode=self._open_episode,
            capacity=self.capacity,
            frame_shape=list(self.frame_shape),
            action_dim=self.action_dim,
            rng=self.rng.bit_generator.state,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output into a buffer built with the same capacity and shapes."""
        expected = {
            "capacity": self.capacity,
            "frame_shape": list(self.frame_shape),
            "action_dim": self.action_dim,
        }
        found = {key: (list(state[key]) if key == "frame_shape" else state[key]) for key in expected}
        if found != expected:
            raise ValueError(f"replay state does not fit this buffer: saved {found}, buffer {expected}")
        filled = min(int(state["total"]), self.capacity)
        for name, array in self._arrays().items():
            array[:filled] = np.asarray(state[name])
        self._total = int(state["total"])
        index = np.arange(self._oldest, self._total)
        self._num_first_frames = int(np.count_nonzero(self._episode_start[index % self.capacity] == index))
        self._open_episode = bool(state["open_episode"])
        self.rng.bit_generator.state = state["rng"]
