"""spendgate: exact, concurrency-safe cost tracking and budgets for LLM API calls."""

from spendgate.errors import (
    BudgetExceededError,
    ConfigError,
    CostTrackingBudgetExceededError,
    SpendgateError,
    UnknownModelPriceError,
)
from spendgate.money import Money

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "CostTrackingBudgetExceededError",
    "Money",
    "SpendgateError",
    "UnknownModelPriceError",
]
__version__ = "0.1.0"
