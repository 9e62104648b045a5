"""Self-supervised methods and their registry. A method is one file: an ``SSLMethod`` subclass decorated with
``@register_method`` and its ``MethodSettings`` (the keys of its recipe section, each declared once with type,
range, default and meaning); importing the file here registers it.

``resolve_method_settings(recipe)`` checks a recipe's ``method:`` section with the named method's settings;
``build_method`` instantiates it.
"""

from __future__ import annotations

from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, SSLMethod
from geomed_ssl.methods.registry import (METHODS, build_method, describe_methods, method_class, method_settings,
                                         register_method, resolve_method_settings, with_method_settings)
from geomed_ssl.methods.dino import DINO, DINOSettings  # noqa: E402  (registers "dino")
from geomed_ssl.methods.mae import MAE, MAESettings  # noqa: E402  (registers "mae")
from geomed_ssl.methods.simclr import SimCLR  # noqa: E402,F401  (registers "simclr")
from geomed_ssl.methods.moco_v2 import MoCoV2  # noqa: E402,F401  (registers "moco_v2")
from geomed_ssl.methods.moco_v3 import MoCoV3  # noqa: E402,F401  (registers "moco_v3")
from geomed_ssl.methods.byol import BYOL  # noqa: E402,F401  (registers "byol")
from geomed_ssl.methods.simsiam import SimSiam  # noqa: E402,F401  (registers "simsiam")
from geomed_ssl.methods.barlow_twins import BarlowTwins  # noqa: E402,F401  (registers "barlow_twins")
from geomed_ssl.methods.vicreg import VICReg  # noqa: E402,F401  (registers "vicreg")
from geomed_ssl.methods.swav import SwAV  # noqa: E402,F401  (registers "swav")
from geomed_ssl.methods.deepcluster import DeepCluster  # noqa: E402,F401  (registers "deepcluster")
from geomed_ssl.methods.msn import MSN  # noqa: E402,F401  (registers "msn")
from geomed_ssl.methods.vicreg_dense import VICRegDense, VICRegDenseSettings  # noqa: E402  (registers "vicreg_dense")
# masked image modelling beyond MAE, and the classic pretext tasks (issue 14)
from geomed_ssl.methods.simmim import SimMIM  # noqa: E402,F401
from geomed_ssl.methods.maskfeat import MaskFeat  # noqa: E402,F401
from geomed_ssl.methods.beit import BEiT  # noqa: E402,F401
from geomed_ssl.methods.cae import CAE  # noqa: E402,F401
from geomed_ssl.methods.ijepa import IJEPA  # noqa: E402,F401
from geomed_ssl.methods.inpainting import Inpainting  # noqa: E402,F401
from geomed_ssl.methods.rotation import Rotation  # noqa: E402,F401
from geomed_ssl.methods.jigsaw import Jigsaw  # noqa: E402,F401
from geomed_ssl.methods.context import Context  # noqa: E402,F401
from geomed_ssl.methods.cross_band import CrossBand  # noqa: E402,F401

__all__ = ["METHODS", "MethodCard", "MethodContext", "MethodOutput", "MethodSettings", "SSLMethod", "MAE", "MAESettings", "DINO",
           "DINOSettings", "build_method", "describe_methods", "method_class", "method_settings", "register_method",
           "resolve_method_settings", "with_method_settings", "VICRegDense", "VICRegDenseSettings"]
