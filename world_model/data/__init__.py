"""World-model episode data: `world_model.data.dataset.EpisodeDataset` reads folders of episode `.npz` files
(`python -m mbrl.collect` records scripted Meta-World episodes in that layout)."""
