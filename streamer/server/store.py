"""Where a server keeps what outlives one connection: the streams' saved speaker states
(resume by ``resume_id``), the audio context of drained streams (so that their
continuation on another replica decides as the uncut stream would), the ids of redeemed
single-use session tokens, and the voiceprint registry.

:class:`MemoryStore` (the default) keeps them in the process: a stream resumes by id only
on the process that saved it. :class:`RedisStore` (``--redis-url``, the ``redis`` extra)
keeps them in Redis with expiry times, so that every replica behind a load balancer sees
them: a client whose replica was drained or lost resumes on any other, a single-use URL
opens one websocket across all replicas, and a voiceprint registered on one is known to
all. Keys are ``streamer:state:ID``, ``streamer:context:ID``, ``streamer:token:ID``,
``streamer:voiceprint:NAME``; values are JSON.

Every method is a coroutine; a store that cannot be reached raises
:class:`StoreUnavailable`, which the server turns into a clear error for the one request
that needed it (a stream never fails because a periodic save failed).
"""
from __future__ import annotations

import collections
import json
import logging
import math
import time
from typing import Any, Callable

from streamer.errors import StreamerError

logger = logging.getLogger(__name__)

#: Default lifetime of a saved stream state, seconds.
DEFAULT_STATE_TTL = 3600.0
#: Default lifetime of a registered voiceprint, seconds (30 days); 0 keeps them.
DEFAULT_VOICEPRINT_TTL = 30 * 86400.0
#: Most entries of each kind a :class:`MemoryStore` holds (the oldest go first).
MEMORY_LIMIT = 10000
#: Most audio contexts a :class:`MemoryStore` holds (each is seconds of audio).
MEMORY_CONTEXTS = 64
#: Seconds a drained stream's audio context is kept: its client reconnects at once.
CONTEXT_TTL = 300.0
#: Seconds a Redis command may take before the store counts as unavailable.
REDIS_TIMEOUT = 2.0


class StoreUnavailable(StreamerError):
    """The shared store (Redis) did not answer."""

    code = "store_unavailable"


class Store:
    """What every store offers; a store implements ``_put``, ``_get``, ``_delete`` and
    ``_claim`` for its kinds of entry (``state``, ``context``, ``token``, ``voiceprint``)."""

    #: Whether other processes and replicas see the same entries.
    shared = False

    async def _put(self, kind: str, key: str, value: Any, ttl: float) -> None:
        raise NotImplementedError

    async def _get(self, kind: str, key: str) -> Any:
        raise NotImplementedError

    async def _delete(self, kind: str, key: str) -> bool:
        raise NotImplementedError

    async def _claim(self, key: str, ttl: float) -> bool:
        raise NotImplementedError

    async def put_state(self, key: str, record: dict[str, Any], ttl: float) -> None:
        await self._put("state", key, record, ttl)

    async def get_state(self, key: str) -> dict[str, Any] | None:
        return await self._get("state", key)

    async def put_context(self, key: str, context: dict[str, Any], ttl: float) -> None:
        await self._put("context", key, context, ttl)

    async def get_context(self, key: str) -> dict[str, Any] | None:
        return await self._get("context", key)

    async def claim_token(self, token_id: str, ttl: float) -> bool:
        """True the first time ``token_id`` is claimed within ``ttl`` seconds."""
        return await self._claim(token_id, max(ttl, 0.001))

    async def put_voiceprint(self, name: str, entry: dict[str, Any], ttl: float) -> None:
        await self._put("voiceprint", name, entry, ttl)

    async def get_voiceprint(self, name: str) -> dict[str, Any] | None:
        return await self._get("voiceprint", name)

    async def delete_voiceprint(self, name: str) -> bool:
        return await self._delete("voiceprint", name)

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the store cannot be reached."""

    async def close(self) -> None:
        """Release the store's connections."""


class MemoryStore(Store):
    """The store of one process: bounded dictionaries with expiry times."""

    def __init__(self, limit: int = MEMORY_LIMIT, clock: Callable[[], float] = time.monotonic):
        self.limits = {"state": limit, "token": limit, "voiceprint": limit,
                       "context": min(limit, MEMORY_CONTEXTS)}
        self._clock = clock
        self._kinds: dict[str, collections.OrderedDict[str, tuple[float, str]]] = {
            kind: collections.OrderedDict() for kind in self.limits}

    async def _put(self, kind: str, key: str, value: Any, ttl: float) -> None:
        entries = self._kinds[kind]
        entries.pop(key, None)
        now = self._clock()
        entries[key] = (now + ttl if ttl else math.inf, json.dumps(value))
        # Oldest writes first: with one lifetime per kind, expired entries lead.
        while entries and (len(entries) > self.limits[kind]
                           or next(iter(entries.values()))[0] <= now):
            entries.popitem(last=False)

    async def _get(self, kind: str, key: str) -> Any:
        found = self._kinds[kind].get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._kinds[kind][key]
            return None
        return json.loads(found[1])

    async def _delete(self, kind: str, key: str) -> bool:
        found = await self._get(kind, key) is not None  # an expired entry counts as gone
        self._kinds[kind].pop(key, None)
        return found

    async def _claim(self, key: str, ttl: float) -> bool:
        if await self._get("token", key) is not None:
            return False
        await self._put("token", key, 1, ttl)
        return True



class RedisStore(Store):
    """The store in Redis (``redis.asyncio``), shared by every replica."""

    shared = True
    PREFIX = "streamer:"

    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT):
        try:
            import redis.asyncio as redis
        except ImportError:
            raise StreamerError("--redis-url needs the redis client: pip install "
                                "'streamer[redis]'") from None
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                               socket_connect_timeout=timeout)
        except ValueError as error:
            raise StreamerError(f"bad --redis-url: {error}") from None
        self._errors = (redis.RedisError, OSError, TimeoutError)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.PREFIX}{kind}:{key}"

    async def _run(self, what: str, command: Any) -> Any:
        try:
            return await command
        except self._errors as error:
            raise StoreUnavailable(f"the shared store (Redis) did not answer {what}: "
                                   f"{type(error).__name__}: {error}") from None

    async def _put(self, kind: str, key: str, value: Any, ttl: float) -> None:
        await self._run(f"saving a {kind}", self._redis.set(
            self._key(kind, key), json.dumps(value),
            px=max(1, int(ttl * 1000)) if ttl else None))

    async def _get(self, kind: str, key: str) -> Any:
        raw = await self._run(f"reading a {kind}", self._redis.get(self._key(kind, key)))
        return None if raw is None else json.loads(raw)

    async def _delete(self, kind: str, key: str) -> bool:
        return bool(await self._run(f"deleting a {kind}",
                                    self._redis.delete(self._key(kind, key))))

    async def _claim(self, key: str, ttl: float) -> bool:
        # SET NX: exactly one of several replicas that race for the same token wins.
        return bool(await self._run("redeeming a session token", self._redis.set(
            self._key("token", key), "1", nx=True, px=max(1, int(ttl * 1000)))))

    async def ping(self) -> None:
        await self._run("a ping", self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str | None) -> Store:
    """The store the settings ask for: Redis at ``redis_url``, else this process's."""
    return RedisStore(redis_url) if redis_url else MemoryStore()


__all__ = ["CONTEXT_TTL", "DEFAULT_STATE_TTL", "DEFAULT_VOICEPRINT_TTL", "MemoryStore", "RedisStore",
           "Store", "StoreUnavailable", "open_store"]
