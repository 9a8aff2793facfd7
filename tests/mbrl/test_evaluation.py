import numpy as np

from core.runtime import derive_seed
from core.video import VideoRecorder
from mbrl.evaluation import EVAL_SEED_STREAM, run_eval_episodes


class CountingEnv:
    """Episodes of 3 steps with reward 1 each; success on the last step of episodes that started at an even seed."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def reset(self, seed: int):
        self.seeds.append(seed)
        self.t = 0
        return np.zeros(1), {"frame": np.full((3, 4, 4), len(self.seeds), np.uint8)}

    def step(self, action):
        self.t += 1
        last = self.t == 3
        info = {"frame": np.full((3, 4, 4), 10 * self.t, np.uint8), "success": last and self.seeds[-1] % 2 == 0}
        return np.zeros(1), 1.0, False, last, info


def test_episodes_are_seeded_scored_and_the_first_is_recorded(tmp_path):
    env, resets = CountingEnv(), []
    video = VideoRecorder(tmp_path, "gif")
    metrics = run_eval_episodes(env, lambda obs: np.zeros(4), run_seed=7, step=50, num_episodes=4,
                                action_repeat=2, video=video, on_reset=lambda: resets.append(1))
    assert env.seeds == [derive_seed(7, EVAL_SEED_STREAM, 50, i) for i in range(4)]
    assert len(resets) == 4
    expected_success = np.mean([seed % 2 == 0 for seed in env.seeds])
    assert metrics == {"eval/episode_return": 3.0, "eval/success_rate": expected_success,
                       "eval/episode_length": 6.0}
    assert len(video._frames) == 4  # first episode only: its reset frame and 3 steps
    assert video._frames[0].mean() == 1


def test_no_episodes_no_metrics(tmp_path):
    assert run_eval_episodes(CountingEnv(), lambda obs: np.zeros(4), run_seed=1, step=0, num_episodes=0,
                             action_repeat=2, video=VideoRecorder(tmp_path)) is None
