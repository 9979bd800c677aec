"""How the nodes that share a Redis store tell each other what changed.

Every entry carries the version it was computed at: ``LastUpdate`` (read
from the shared database) and the generations (:mod:`.freshness`).  For a
node to serve what another computed, and never what another outdated, the
nodes must hold the same generations.  So with ``Backend: redis``:

* every change of a node's generations is merged into one hash on the
  server (``{prefix}g``: the base under the field ``" base"``, each touched
  resource under its id) and published on a channel (``{prefix}changes``),
  both by one script (:data:`_MERGE`), before the write it announces goes on;
* every node listens on the channel (its own connection, on a thread of
  this module) and merges what others published.  Merging keeps the newest
  generation of each (:func:`.freshness.newer`), so the order of updates
  does not matter, and a node that joins (at start, or after losing the
  channel: messages sent meanwhile are lost) reads the hash once it is
  subscribed, merges it and publishes what it knows, then serves again;
* a new instance moves ``LastUpdate`` and no generation: the node that
  stored it publishes a message without generations (``forget``), and the
  others read their remembered ``LastUpdate`` values again.

While a node does not hear the channel (not yet joined, connection lost,
no answer to its pings), it serves nothing from the store: the owner holds
every version unsettled (:meth:`.freshness.Generations.hold`).  A node
whose publication fails tells the others through Orthanc's change log
instead (:mod:`..host.changes`), as nodes with separate stores do.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..core.data import GenerationUpdate
from ..store.redis_connection import RedisConnection

#: The hash's field holding the base generation (resource ids have no spaces).
BASE_FIELD = " base"

#: Merges an update into the hash and publishes it.  KEYS: hash, channel; ARGV: the
#: message, the base ("" for none), then resource id and generation pairs.  Ordering as
#: freshness.newer: by date, then by text; touches dated no later than the base go.
_MERGE = """
local function date(generation)
  local seconds = string.match(generation, '^([0-9]+%.?[0-9]*)/[0-9a-f]+$')
  if seconds then return tonumber(seconds) end
  return -1
end
local function newer(first, second)
  local a, b = date(first), date(second)
  if a ~= b then return a > b end
  return first > second
end
local base = redis.call('HGET', KEYS[1], ' base') or ''
if ARGV[2] ~= '' and newer(ARGV[2], base) then
  base = ARGV[2]
  redis.call('HSET', KEYS[1], ' base', base)
  local floor = date(base)
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i] ~= ' base' and date(all[i + 1]) <= floor then
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
end
local floor = date(base)
for i = 3, #ARGV - 1, 2 do
  local generation = ARGV[i + 1]
  if date(generation) > floor and newer(generation, redis.call('HGET', KEYS[1], ARGV[i]) or '') then
    redis.call('HSET', KEYS[1], ARGV[i], generation)
  end
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


def encode(node: str, update: GenerationUpdate) -> str:
    """The message published for ``update``."""
    return json.dumps({"node": node, "base": update.base, "touched": update.touched,
                       "forget": update.forget}, separators=(",", ":"))


def decode(message: Any) -> Optional[Tuple[str, GenerationUpdate]]:
    """(sending node, update) of a published message; None if it is not one."""
    try:
        found = json.loads(message)
        node, base, touched = found["node"], found["base"], found["touched"]
        if isinstance(node, str) and isinstance(base, str) and isinstance(touched, dict) \
                and all(isinstance(key, str) and isinstance(value, str)
                        for key, value in touched.items()):
            return node, GenerationUpdate(base, touched, bool(found.get("forget")))
    except (ValueError, KeyError, TypeError):
        pass
    return None


def from_hash(fields: Dict[Any, Any]) -> GenerationUpdate:
    """The generations the hash holds, as one update."""
    text = {_text(key): _text(value) for key, value in fields.items()}
    base = text.pop(BASE_FIELD, "")
    return GenerationUpdate(base, text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisBus:
    """Publishes this node's generation updates and hears the other nodes' (see above).

    ``on_update(update)`` gets each other node's update, ``on_lost(reason)`` is
    called when the channel is lost (or before it is first joined), and
    ``on_joined(shared)`` with the hash's content once subscribed; it returns
    whether the node could rejoin (False: try again later).  All three run on
    this module's thread.
    """

    #: Seconds without any message after which the listener pings the server.
    PING_AFTER = 1.0
    #: Seconds a ping may wait for its answer before the channel counts as lost.
    PING_TIMEOUT = 2.0
    #: Seconds before the first attempt to listen again; each failed attempt doubles it.
    RETRY_DELAY = 0.5
    LONGEST_RETRY_DELAY = 5.0

    def __init__(self, connection: RedisConnection,
                 on_update: Callable[[GenerationUpdate], None],
                 on_lost: Callable[[str], None],
                 on_joined: Callable[[GenerationUpdate], bool]):
        self._connection = connection
        prefix = connection.options.prefix
        self.hash, self.channel = prefix + "g", prefix + "changes"
        #: This process, in its messages (its own are not merged again).
        self.node = os.urandom(8).hex()
        self._on_update, self._on_lost, self._on_joined = on_update, on_lost, on_joined
        self._stopping = threading.Event()
        self._pubsub: Any = None
        self._client: Any = None
        self._thread = threading.Thread(target=self._listen, name="cache-bus", daemon=True)
        #: Whether a forget message waits to be sent (many stored instances: one message).
        self._forget_pending = threading.Event()
        #: Set once the first attempt to join has ended, joined or not.
        self._first_attempt = threading.Event()

    def publish(self, update: GenerationUpdate) -> bool:
        """Merge ``update`` into the hash and publish it; False when the server failed."""
        arguments = [encode(self.node, update), update.base]
        for resource_id, generation in update.touched.items():
            arguments += [resource_id, generation]
        return bool(self._connection.call(
            lambda client: client.eval(_MERGE, 2, self.hash, self.channel, *arguments), False))

    def tell_forget(self) -> None:
        """Tell the other nodes to read their remembered ``LastUpdate`` values again (a new
        instance), without waiting; messages asked for meanwhile are sent as one."""
        if self._forget_pending.is_set():
            return
        self._forget_pending.set()
        message = encode(self.node, GenerationUpdate(forget=True))

        def send(client: Any) -> int:
            self._forget_pending.clear()
            return int(client.publish(self.channel, message))

        if not self._connection.call_soon(send):
            self._forget_pending.clear()

    def start(self, wait: float = 0.0) -> bool:
        """Listen, on this module's thread; wait at most ``wait`` seconds for the first
        attempt to join to end.  Whether it ended within them."""
        self._thread.start()
        return self._first_attempt.wait(wait)

    def stop(self) -> None:
        self._stopping.set()
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass
        if self._thread.is_alive():
            self._thread.join(5)

    def _listen(self) -> None:
        delay = self.RETRY_DELAY
        self._on_lost("not joined yet")
        while not self._stopping.is_set():
            try:
                if self._follow():
                    return
            except Exception as error:  # whatever the client raises: listen again later
                if self._stopping.is_set():
                    return
                self._on_lost("%s: %s" % (type(error).__name__, error))
            finally:
                self._close()
                self._first_attempt.set()
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.LONGEST_RETRY_DELAY)

    def _follow(self) -> bool:
        """Subscribe, join, then merge messages until the channel fails (raises) or the
        bus stops (True)."""
        timeout = max(self._connection.options.timeout, 1.0)
        self._client = client = self._connection.new_client(timeout)
        self._pubsub = pubsub = client.pubsub()
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + timeout
        while True:  # the subscription is in place once the server confirms it
            message = pubsub.get_message(timeout=timeout)
            if message is not None and message.get("type") == "subscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no confirmation of the subscription")
        if not self._on_joined(from_hash(client.hgetall(self.hash))):
            raise RuntimeError("could not publish this node's generations")
        self._first_attempt.set()
        last_heard, pinged = time.monotonic(), None
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=0.25)
            now = time.monotonic()
            if message is not None:
                last_heard, pinged = now, None
                if message.get("type") == "message":
                    self._deliver(message.get("data"))
            elif pinged is not None and now - pinged > self.PING_TIMEOUT:
                raise TimeoutError("no answer to a ping for %.1f s" % self.PING_TIMEOUT)
            elif pinged is None and now - last_heard > self.PING_AFTER:
                pubsub.ping()
                pinged = now
        return True

    def _deliver(self, data: Any) -> None:
        found = decode(data)
        if found is not None and found[0] != self.node:
            self._on_update(found[1])

    def _close(self) -> None:
        pubsub, self._pubsub, client, self._client = self._pubsub, None, self._client, None
        for connection in (pubsub, client):
            if connection is not None:
                try:
                    connection.close()
                except Exception:
                    pass
