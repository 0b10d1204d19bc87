"""spendgate: exact, concurrency-safe cost tracking and budgets for LLM API calls."""

from spendgate.attribution import attribute, max_cost
from spendgate.budgets import Attributes, Budget, Window
from spendgate.client import AsyncClient, BudgetTooSmallWarning, Client
from spendgate.clock import ManualClock, SystemClock
from spendgate.cost import Cost, cost_of
from spendgate.errors import (
    BudgetExceededError,
    ConfigError,
    CostCapExceededError,
    CostTrackingBudgetExceededError,
    RateLimitExceededError,
    SpendgateError,
    UnknownModelPriceError,
)
from spendgate.estimate import Estimate, EstimateError, estimate_request
from spendgate.guard import Admission, Guard
from spendgate.integrations import wrap
from spendgate.ledger import Ledger, LedgerUnavailableError, open_ledger
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice
from spendgate.tokens import TokenCount, TokenCounter
from spendgate.usage import Usage

__all__ = [
    "Admission",
    "AsyncClient",
    "Attributes",
    "Budget",
    "BudgetExceededError",
    "BudgetTooSmallWarning",
    "Catalog",
    "Client",
    "ConfigError",
    "Cost",
    "CostCapExceededError",
    "CostTrackingBudgetExceededError",
    "Estimate",
    "EstimateError",
    "Guard",
    "Ledger",
    "LedgerUnavailableError",
    "ManualClock",
    "ModelPrice",
    "Money",
    "RateLimitExceededError",
    "SpendgateError",
    "SystemClock",
    "TokenCount",
    "TokenCounter",
    "UnknownModelPriceError",
    "Usage",
    "Window",
    "attribute",
    "cost_of",
    "estimate_request",
    "max_cost",
    "open_ledger",
    "wrap",
]
__version__ = "0.1.0"
