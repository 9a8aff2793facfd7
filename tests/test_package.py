import importlib


def test_packages_import():
    for name in ("mbrl", "agents", "world_model"):
        assert importlib.import_module(name) is not None
