"""Cost computations and price lookups per second: spendgate next to tokencost.

    .venv/bin/python -m bench.cost [--seconds 1.0]

tokencost is installed in its own virtual environment under .bench-venv/
(never a dependency of spendgate) and measured in the same run on the same
model names and token counts. Goal: spendgate at least 10x tokencost's rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import textwrap

from bench._util import python_version, rate, run_json, side_venv
from spendgate.cost import cost_of
from spendgate.pricing.catalog import Catalog
from spendgate.usage import Usage

# Names as users type them: bare, provider-prefixed, snapshots.
# Both tools must know a name for it to be measured: the run uses the common ones.
CANDIDATES = [
    "gpt-4o",
    "openai/gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "claude-sonnet-4-5",
    "anthropic/claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gpt-5",
    "o3",
    "gemini/gemini-2.5-pro",
]
COUNTS = [(1234, 567, 200), (100_000, 2000, 0), (7, 3, 0), (52_000, 4096, 48_000)]

TOKENCOST = textwrap.dedent(
    """
    import itertools, json, logging, time
    logging.disable(logging.CRITICAL)
    import tokencost
    from tokencost.constants import TOKEN_COSTS
    from tokencost.costs import _normalize_model_for_pricing, calculate_cost_by_tokens
    MODELS = []
    for name in {models!r}:
        try:
            calculate_cost_by_tokens(1, name, "input")
            calculate_cost_by_tokens(1, name, "cached")
            MODELS.append(name)
        except Exception:
            pass
    COUNTS = {counts!r}

    def rate(func, seconds={seconds}, batch=1000):
        best = 0.0
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for _ in range(batch):
                    func()
                calls += batch
            best = max(best, calls / (time.perf_counter() - start))
        return best

    names = itertools.cycle(MODELS)
    def lookup():
        return TOKEN_COSTS[_normalize_model_for_pricing(next(names))]

    work = itertools.cycle([(m, c) for m in MODELS for c in COUNTS])
    def cost():
        model, (inp, out, cached) = next(work)
        # tokencost prices cached tokens only on request; the request total is three calls.
        return (calculate_cost_by_tokens(inp - cached, model, "input")
                + calculate_cost_by_tokens(cached, model, "cached")
                + calculate_cost_by_tokens(out, model, "output"))

    print(json.dumps({{"lookup": rate(lookup), "cost": rate(cost), "models": MODELS}}))
    """
)


def measure_spendgate(models: list[str], seconds: float) -> dict[str, float]:
    catalog = Catalog.builtin()
    names = itertools.cycle(models)

    def lookup() -> object:
        return catalog.price(next(names))

    work = itertools.cycle([(m, c) for m in models for c in COUNTS])

    def cost() -> object:
        model, (inp, out, cached) = next(work)
        usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached)
        return cost_of(usage, catalog.price(model)).total

    return {"lookup": rate(lookup, seconds=seconds), "cost": rate(cost, seconds=seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed run (best of 3)")
    args = parser.parse_args()

    python = side_venv("tokencost", ["tokencost==0.1.26"])
    theirs = run_json(python, TOKENCOST.format(models=CANDIDATES, counts=COUNTS, seconds=args.seconds))
    models: list[str] = list(theirs.pop("models"))
    ours = measure_spendgate(models, args.seconds)

    print(
        f"Python {python_version()}; tokencost 0.1.26; models: {', '.join(models)}; {len(COUNTS)} token counts each"
    )
    print(f"{'operation':<34}{'spendgate /s':>14}{'tokencost /s':>14}{'ratio':>8}  goal")
    for key, label in (("lookup", "price lookup"), ("cost", "request cost (lookup + compute)")):
        ratio = ours[key] / theirs[key]
        verdict = "met" if ratio >= 10 else "NOT met"
        print(f"{label:<34}{ours[key]:>14,.0f}{theirs[key]:>14,.0f}{ratio:>7.1f}x  >= 10x: {verdict}")
    print(json.dumps({"spendgate": ours, "tokencost": theirs}))


if __name__ == "__main__":
    main()
