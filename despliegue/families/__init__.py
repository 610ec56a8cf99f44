"""Per-family recipes: how a reference model is built and how an imported artifact is probed.

Each module exposes a `RECIPE` (see `base.Recipe`). `save_models.py` walks `RECIPES`; the
runners never import these modules, so training code stays out of the serving path.
"""

from despliegue.families.antibiotics import RECIPE as ANTIBIOTICS
from despliegue.families.base import Recipe
from despliegue.families.faces import BLAZEFACE_DETECTOR
from despliegue.families.faces import DETECTOR as FACE_DETECTOR
from despliegue.families.faces import VALIDATOR as FACE_VALIDATOR
from despliegue.families.falsetrue import RECIPE as FALSETRUE
from despliegue.families.flowers import RECIPE as FLOWERS
from despliegue.families.heatflow import RECIPE as HEATFLOW

RECIPES: dict[str, Recipe] = {
    recipe.family: recipe
    for recipe in (HEATFLOW, FALSETRUE, FLOWERS, FACE_DETECTOR, FACE_VALIDATOR, ANTIBIOTICS)
}
# A second detector the face_detector family can serve (configuration picks the model name).
RECIPES[BLAZEFACE_DETECTOR.model_name] = BLAZEFACE_DETECTOR

__all__ = ["RECIPES", "Recipe"]
