"""Per-family recipes: how a reference model is built and how an imported artifact is probed.

Each module exposes its `Recipe` (see `base.Recipe`); the registry (despliegue/registry.py)
names the recipe of every model, and `save_models.py` walks `registry.recipes()`. The runners
never import these modules, so training code stays out of the serving path.
"""
