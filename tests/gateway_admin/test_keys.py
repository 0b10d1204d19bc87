from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.clock import ManualClock
from spendgate.errors import ConfigError
from spendgate.gateway.keys import KeyStore, SQLiteKeyStore, hash_secret, open_keystore
from spendgate.ledger import open_ledger

START = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    clock = ManualClock(START)
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    ks = open_keystore(url, clock=clock, cache_ttl=5)
    yield ks
    ks.close()


def clock_of(store: KeyStore) -> ManualClock:
    assert isinstance(store.clock, ManualClock)
    return store.clock


def test_create_and_authenticate(store: KeyStore) -> None:
    key, secret = store.create(
        user="alice", team="research", tags=["batch", "x"], models=["gpt-4o", "claude-*"], name="n"
    )
    assert re.fullmatch(r"sg-[A-Za-z0-9_-]{43}", secret)
    assert re.fullmatch(r"key_[0-9a-f]{16}", key.id)
    assert key.hint == secret[:7] + "…"
    assert key.attributes.key == key.id
    assert key.attributes.user == "alice" and key.attributes.tags == frozenset({"batch", "x"})
    assert key.allows("claude-3-haiku") and not key.allows("o3")
    found = store.authenticate(secret)
    assert found == key
    assert store.get(key.id) == key
    assert store.list() == [key]
    assert store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.authenticate("nonsense") is None
    assert store.authenticate("") is None


def test_disable_enable_within_ttl(store: KeyStore) -> None:
    key, secret = store.create(user="bob")
    assert store.authenticate(secret) is not None
    store.disable(key.id)  # this process's cache is cleared at once
    assert store.authenticate(secret) is None
    assert store.lookup(secret) is not None and store.get(key.id).disabled
    store.enable(key.id)
    assert store.authenticate(secret) is not None


def test_rotate(store: KeyStore) -> None:
    key, old = store.create(team="t")
    again, new = store.rotate(key.id)
    assert again.id == key.id and again.attributes == key.attributes and new != old
    assert store.authenticate(old) is None
    assert store.authenticate(new) == again


def test_expiry(store: KeyStore) -> None:
    _, secret = store.create(expires_at=START + timedelta(hours=1))
    assert store.authenticate(secret) is not None
    clock_of(store).advance(3600)
    assert store.authenticate(secret) is None
    with pytest.raises(ValueError, match="time zone"):
        store.create(expires_at=datetime(2027, 1, 1))


def test_delete_and_unknown(store: KeyStore) -> None:
    key, secret = store.create()
    assert store.delete(key.id)
    assert not store.delete(key.id)
    assert store.authenticate(secret) is None
    for call in (store.get, store.disable, store.enable, store.rotate):
        with pytest.raises(KeyError):
            call(key.id)


def test_bad_attributes(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="user"):
        store.create(user="")
    with pytest.raises(ValueError, match="tag"):
        store.create(tags=["ok", "bad\n"])


def test_cache_ttl_across_instances(tmp_path: Path) -> None:
    """A key disabled by another instance stops working once the cache entry is older than the TTL."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(START)
    a = open_keystore(url, clock=clock, cache_ttl=5)
    b = open_keystore(url, clock=clock, cache_ttl=5)
    key, secret = a.create(user="carol")
    assert b.authenticate(secret) is not None  # cached in b now
    a.disable(key.id)
    clock.advance(4.9)
    assert b.authenticate(secret) is not None  # still cached: at most cache_ttl stale
    clock.advance(0.2)
    assert b.authenticate(secret) is None
    a.close()
    b.close()


def test_sqlite_stores_hash_not_secret_and_shares_ledger_file(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    ledger = open_ledger(f"sqlite:///{path}")
    store = open_keystore(f"sqlite:///{path}")
    key, secret = store.create(user="dave")
    store.rotate(key.id)
    _, secret2 = store.rotate(key.id)
    store.close()
    ledger.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("spend.db"))
    assert secret.encode() not in blob and secret2.encode() not in blob
    assert secret2[3:20].encode() not in blob
    assert hash_secret(secret2).encode() in blob
    reopened = SQLiteKeyStore(path)
    assert reopened.authenticate(secret2) is not None
    assert reopened.get(key.id).attributes.user == "dave"
    reopened.close()
    # the ledger still works in the same file
    assert open_ledger(f"sqlite:///{path}").list_budgets() == []


def test_threads(tmp_path: Path) -> None:
    store = open_keystore(f"sqlite:///{tmp_path / 'spend.db'}")
    made: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            _, secret = store.create(user="u")
            assert store.authenticate(secret) is not None
            with lock:
                made.append(secret)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list()) == 40 and len(set(made)) == 40
    store.close()


def test_open_keystore_urls() -> None:
    with pytest.raises(ConfigError, match=r"unknown ledger URL .*known schemes: memory://, postgres"):
        open_keystore("mysql://u:pw@host/0")
    with pytest.raises(ConfigError) as info:
        open_keystore("mysql://u:pw@host/0")
    assert "pw" not in str(info.value)
    with pytest.raises(ConfigError):
        open_keystore("sqlite://relative")


def test_open_keystore_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open virtual keys in"):
        open_keystore(f"sqlite:///{tmp_path / 'missing' / 'spend.db'}")


def test_forked_child_uses_its_own_connection(tmp_path: Path) -> None:
    import multiprocessing

    store = open_keystore(f"sqlite:///{tmp_path / 'spend.db'}")
    _, secret = store.create(user="parent")
    ctx = multiprocessing.get_context("fork")

    def child() -> None:
        import sys

        ok = store.authenticate(secret) is not None and store.create(user="child") is not None
        store.close()
        sys.exit(0 if ok else 1)

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(10)
    assert proc.exitcode == 0
    assert {k.attributes.user for k in store.list()} == {"parent", "child"}  # parent handle still fine
    store.close()


class _SlowStorage:
    """Key rows behind a gate a test opens: a database server that answers late."""

    def __init__(self, inner: KeyStore) -> None:
        self.inner = inner.storage
        self.gate = threading.Event()
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def by_hash(self, secret_hash: str) -> object:
        self.reads += 1
        assert self.gate.wait(10)
        return self.inner.by_hash(secret_hash)


def test_a_cache_miss_reads_off_the_loop_once_for_every_waiter() -> None:
    import asyncio

    memory = open_keystore("memory://", clock=ManualClock(START), cache_ttl=5)
    key, secret = memory.create(user="slow")
    slow = _SlowStorage(memory)
    store = KeyStore(slow, clock=memory.clock, cache_ttl=5)  # type: ignore[arg-type]

    async def run() -> None:
        waiters = [asyncio.ensure_future(store.alookup(secret)) for _ in range(20)]
        ticks = 0
        for _ in range(5):  # the loop keeps turning while the read is held
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5 and not any(w.done() for w in waiters)
        waiters[0].cancel()  # one caller giving up does not cancel the read the others wait on
        slow.gate.set()
        found = await asyncio.gather(*waiters[1:])
        assert all(f == key for f in found)
        assert slow.reads == 1
        assert await store.alookup(secret) == key and slow.reads == 1  # cached now
        assert await store.alookup("not a secret") is None and slow.reads == 1

    asyncio.run(run())


def test_a_key_store_that_never_answers_fails_closed_within_the_read_timeout() -> None:
    import asyncio

    memory = open_keystore("memory://", clock=ManualClock(START), cache_ttl=5)
    _, secret = memory.create(user="hung")
    slow = _SlowStorage(memory)
    store = KeyStore(slow, clock=memory.clock, cache_ttl=5, read_timeout=0.2)  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(TimeoutError, match=r"did not answer within 0\.2 s"):
            await asyncio.gather(store.alookup(secret), store.alookup(secret))
        assert slow.reads == 1  # the waiters gave up on one read, not one each
        slow.gate.set()

    asyncio.run(run())
