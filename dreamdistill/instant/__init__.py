"""Instant text-to-3D: one text-conditioned field G_θ(y) for the toy vocabulary, trained by amortised SDS.

Modules, importing one way: prompts, generator -> config -> trainer -> run (training folder, generator folder)
-> infer (``dreamdistill PROMPT --instant`` / ``--init instant``).
"""

from dreamdistill.instant.config import InstantConfig
from dreamdistill.instant.generator import ConditioningConfig, InstantField, film, fold_film, mean_token_embedding
from dreamdistill.instant.prompts import HELD_OUT_PAIRS, all_prompts, held_out_prompts, training_prompts

__all__ = ["ConditioningConfig", "HELD_OUT_PAIRS", "InstantConfig", "InstantField", "all_prompts", "film",
           "fold_film", "held_out_prompts", "mean_token_embedding", "training_prompts"]
