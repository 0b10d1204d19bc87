"""CLI commands that live in a module of their own, each registered on ``spendgate.cli.main``."""
