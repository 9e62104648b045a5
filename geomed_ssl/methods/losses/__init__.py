"""Losses of the contrastive, siamese and clustering methods (and MSN's): pure functions of embeddings (float32,
autocast off), plus the two that carry state (MoCo v2's queue, DeepCluster-v2's memory). Correct over the global
batch under DDP.
"""

from geomed_ssl.methods.losses.contrastive import (
    QueueInfoNCELoss,
    info_nce_loss,
    moco_v3_contrastive,
    moco_v3_loss,
    nt_xent_loss,
)
from geomed_ssl.methods.losses.deepcluster import IGNORE, DeepClusterMemory, deepcluster_loss
from geomed_ssl.methods.losses.msn import MSNTerms, msn_terms
from geomed_ssl.methods.losses.redundancy import (
    BarlowTwinsTerms,
    VICRegTerms,
    barlow_twins_loss,
    barlow_twins_terms,
    off_diagonal,
    vicreg_loss,
    vicreg_terms,
)
from geomed_ssl.methods.losses.siamese import negative_cosine_similarity, symmetric_negative_cosine
from geomed_ssl.methods.losses.sinkhorn import sinkhorn_knopp
from geomed_ssl.methods.losses.swav import swav_loss

__all__ = [
    "IGNORE", "BarlowTwinsTerms", "DeepClusterMemory", "MSNTerms", "QueueInfoNCELoss", "VICRegTerms",
    "barlow_twins_loss", "barlow_twins_terms", "deepcluster_loss", "info_nce_loss", "moco_v3_contrastive",
    "moco_v3_loss", "msn_terms",
    "negative_cosine_similarity", "nt_xent_loss", "off_diagonal", "sinkhorn_knopp", "swav_loss",
    "symmetric_negative_cosine", "vicreg_loss", "vicreg_terms",
]
