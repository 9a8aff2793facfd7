"""World-model episode data: `EpisodeDataset` reads folders of episode `.npz` files;
`python -m world_model.data.collect` records scripted Meta-World episodes in that layout."""

from world_model.data.dataset import EpisodeDataset

__all__ = ["EpisodeDataset"]
