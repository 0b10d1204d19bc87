"""The OpenAI-compatible gateway: ``spendgate serve --config spendgate.yaml``."""
