"""``python -m spendgate.testing``: run the fake upstream until SIGTERM or SIGINT.

The first stdout line is ``listening http://HOST:PORT`` (the root URL; OpenAI clients add ``/v1``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from spendgate.testing.upstream import DEFAULT_OUTPUT_TOKENS, Options, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spendgate.testing", description="Fake OpenAI/Anthropic upstream."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response starts")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream events")
    p.add_argument("--require-key", default=None, help="only this API key is accepted (others get 401)")
    p.add_argument("--default-output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS)
    p.add_argument("--chunk-tokens", type=int, default=1, help="output tokens per stream content event")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one is gone (no orphans after a killed test run)",
    )
    return p


async def _main(args: argparse.Namespace) -> None:
    options = Options(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        require_key=args.require_key,
        default_output_tokens=args.default_output_tokens,
        chunk_tokens=max(1, args.chunk_tokens),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        # Flushed at once: the parent process waits for this exact line.
        print(f"listening {url}", flush=True)

    if args.exit_with_parent:
        parent = os.getppid()

        async def watch_parent() -> None:
            # Bounded by the server's own life: this task ends when stop is set.
            while not stop.is_set():
                if os.getppid() != parent:  # re-parented: whoever started us has died
                    stop.set()
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_parent())
    await serve(args.host, args.port, options, stop, ready)
    if args.exit_with_parent:
        watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_main(_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
