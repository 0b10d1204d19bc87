"""spendgate: exact, concurrency-safe cost tracking and budgets for LLM API calls."""

from spendgate.cost import Cost, cost_of
from spendgate.errors import (
    BudgetExceededError,
    ConfigError,
    CostTrackingBudgetExceededError,
    SpendgateError,
    UnknownModelPriceError,
)
from spendgate.estimate import Estimate, EstimateError, estimate_request
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice
from spendgate.tokens import TokenCount, TokenCounter
from spendgate.usage import Usage

__all__ = [
    "BudgetExceededError",
    "Catalog",
    "ConfigError",
    "Cost",
    "CostTrackingBudgetExceededError",
    "Estimate",
    "EstimateError",
    "ModelPrice",
    "Money",
    "SpendgateError",
    "TokenCount",
    "TokenCounter",
    "UnknownModelPriceError",
    "Usage",
    "cost_of",
    "estimate_request",
]
__version__ = "0.1.0"
