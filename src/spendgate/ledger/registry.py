"""Backends by URL scheme: what each one serves (a ledger, and maybe key storage).

    register_backend("postgresql", pg_ledger, keys=pg_keys)
    open_ledger("postgresql://...", budgets)   # the ledger
    open_keystore("postgresql://...")          # the gateway's virtual keys, same database
    open_ledger(url, create=False)             # an existing ledger only (admin commands)
    resolve_url("sqlite:///x.db", config_dir)  # a relative file against a config's folder

The gateway opens its keys through ``open_keystore`` with the ledger's URL, so
a backend that registers key storage serves the gateway without any change
there. The built-in ``memory`` and ``sqlite`` backends are registered by the
package (``spendgate/ledger/__init__.py``), importing their module only when a
URL asks for them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from spendgate.clock import Clock, SystemClock
from spendgate.errors import ConfigError

if TYPE_CHECKING:  # base.py re-exports this module, so its Ledger is only named here
    from spendgate.budgets import Budget
    from spendgate.gateway.keys import KeyStore
    from spendgate.ledger.base import Ledger
    from spendgate.ledger.protocols import KeyStorage

__all__ = [
    "Backend",
    "BackendFactory",
    "KeyStorageFactory",
    "LedgerFactory",
    "backend_for",
    "known_schemes",
    "open_key_storage",
    "open_keystore",
    "open_ledger",
    "register_backend",
    "resolve_url",
]


class LedgerFactory(Protocol):
    """Builds a ledger from its URL: ``factory(url, budgets=..., clock=..., **options)``."""

    def __call__(
        self, url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any
    ) -> Ledger: ...


#: The name ``register_backend`` callers have used for a ledger factory.
BackendFactory = LedgerFactory


class KeyStorageFactory(Protocol):
    """Builds the virtual keys' storage from the ledger's URL (same file or database).
    ``options`` carry ``create=False`` when the caller must not create the store."""

    def __call__(self, url: str, *, clock: Clock, **options: Any) -> KeyStorage: ...


#: Rewrites a URL naming something relative (a file) against a base folder; see ``resolve_url``.
UrlResolver = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class Backend:
    """What one URL scheme serves; ``keys`` is None for a backend without key storage,
    ``resolve`` None for one whose URLs name nothing relative."""

    scheme: str
    ledger: LedgerFactory
    keys: KeyStorageFactory | None = None
    resolve: UrlResolver | None = None


_BACKENDS: dict[str, Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def register_backend(
    scheme: str,
    factory: LedgerFactory,
    *,
    keys: KeyStorageFactory | None = None,
    resolve: UrlResolver | None = None,
    replace: bool = False,
) -> None:
    """Make ``scheme://...`` URLs open ledgers built by ``factory`` (and key storage by ``keys``;
    ``resolve(url, base_dir)`` makes a relative location absolute, see ``resolve_url``)."""
    scheme = scheme.lower().removesuffix("://")
    with _BACKENDS_LOCK:
        if scheme in _BACKENDS and not replace:
            raise ValueError(f"a ledger backend for {scheme!r} is already registered (pass replace=True)")
        _BACKENDS[scheme] = Backend(scheme, factory, keys, resolve)


def known_schemes() -> list[str]:
    return sorted(_BACKENDS)


def _shown(url: str) -> str:
    return url.rsplit("@", maxsplit=1)[-1]  # never echo credentials


def backend_for(url: str) -> Backend:
    """The backend registered for the URL's scheme; ConfigError("ledger") naming the known ones."""
    scheme, sep, _ = url.partition("://")
    backend = _BACKENDS.get(scheme.lower()) if sep else None
    if backend is None:
        raise ConfigError(
            "ledger",
            f"unknown ledger URL {_shown(url)!r}; known schemes: "
            f"{', '.join(s + '://' for s in known_schemes())}",
        )
    return backend


def resolve_url(url: str, base_dir: str | os.PathLike[str]) -> str:
    """``url`` with a relative location made absolute against ``base_dir``.

    A config file's ``ledger: sqlite:///spend.db`` means the file next to the config, not in
    whatever folder a command happens to run from. Absolute paths, ``memory://``, schemes whose
    backend registers no resolver and unknown schemes (their error comes later, where the URL
    is checked) are returned unchanged.
    """
    scheme, sep, _ = url.partition("://")
    backend = _BACKENDS.get(scheme.lower()) if sep else None
    if backend is None or backend.resolve is None:
        return url
    return backend.resolve(url, os.fspath(base_dir))


def open_ledger(
    url: str,
    budgets: Iterable[Budget] = (),
    *,
    clock: Clock | None = None,
    create: bool = True,
    **options: Any,
) -> Ledger:
    """``open_ledger("memory://")``, ``open_ledger("sqlite:////var/lib/spendgate/spend.db")``.

    Options go to the backend: ``retention``, ``fail_open``, and backend-specific ones.
    ``create=False`` opens an existing ledger only: ``LedgerMissingError`` where there is none
    (what read and admin commands want: they must never leave an empty ledger behind). The
    backend's factory gets ``create=False`` as an option; ``memory://`` ignores it.
    """
    if not create:
        options["create"] = False  # only then: a backend that always creates need not know the option
    return backend_for(url).ledger(url, budgets=list(budgets), clock=clock, **options)


def open_key_storage(url: str, *, clock: Clock | None = None, create: bool = True) -> KeyStorage:
    """The key storage of the backend for ``url`` (the ledger's URL: keys live next to the ledger)."""
    backend = backend_for(url)
    if backend.keys is None:
        with_keys = ", ".join(s + "://" for s, b in sorted(_BACKENDS.items()) if b.keys is not None)
        raise ConfigError(
            "ledger",
            f"the {backend.scheme}:// ledger backend does not store virtual keys ({_shown(url)!r}); "
            f"virtual keys are stored in: {with_keys or 'no registered backend'}",
        )
    options: dict[str, Any] = {} if create else {"create": False}
    return backend.keys(url, clock=clock if clock is not None else SystemClock(), **options)


def open_keystore(
    url: str, *, clock: Clock | None = None, cache_ttl: float = 5.0, create: bool = True
) -> KeyStore:
    """The gateway's virtual keys (rules and cache) over the backend's key storage for ``url``;
    ``create=False`` as for ``open_ledger``."""
    from spendgate.gateway.keys import KeyStore  # the gateway builds on the ledger, not the reverse

    clock = clock if clock is not None else SystemClock()
    return KeyStore(open_key_storage(url, clock=clock, create=create), clock=clock, cache_ttl=cache_ttl)
