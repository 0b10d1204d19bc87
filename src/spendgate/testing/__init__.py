"""Test helpers: a fake OpenAI- and Anthropic-compatible upstream (a real HTTP server process).

Not imported by ``spendgate`` itself, so the library import stays light.
"""

from spendgate.testing.process import FakeUpstream
from spendgate.testing.upstream import (
    DEFAULT_OUTPUT_TOKENS,
    TOKEN_TEXT,
    FakeServer,
    Options,
    output_tokens_for,
    prompt_tokens_for,
)

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "TOKEN_TEXT",
    "FakeServer",
    "FakeUpstream",
    "Options",
    "output_tokens_for",
    "prompt_tokens_for",
]
