"""Active learning: query strategies (``aemia.active.strategies``) and the annotation ledger
(``aemia.active.ledger``). See ``reference/METHODS.md`` §5 for ACFT."""

from aemia.active.strategies import (
    ACFT,
    BALD,
    CoreSet,
    EmbeddingPool,
    Entropy,
    ForegroundRandom,
    LeastConfidence,
    Margin,
    RandomStrategy,
    Strategy,
    acft_matrix,
    acft_scores,
    available_strategies,
    get_strategy,
    rank,
)

__all__ = [
    "ACFT",
    "BALD",
    "CoreSet",
    "EmbeddingPool",
    "Entropy",
    "ForegroundRandom",
    "LeastConfidence",
    "Margin",
    "RandomStrategy",
    "Strategy",
    "acft_matrix",
    "acft_scores",
    "available_strategies",
    "get_strategy",
    "rank",
]
