# timm first: importing it registers the package's models (timm_alphanet/__init__.py), which import these layers; a
# layers module imported first must not be half-loaded when that happens
import timm  # noqa: F401
