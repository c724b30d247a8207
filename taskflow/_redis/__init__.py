"""Redis plumbing shared by :class:`~taskflow.brokers.redis.RedisBroker` and
:class:`~taskflow.results.redis.RedisResultStore`, by composition.

* :mod:`.connection`: :class:`~.connection.Connection`, one app's namespace on one server
  (URL and prefix checks, key naming, the connection pool, the registered scripts) and the
  mapping of client errors to :class:`~taskflow.errors.BrokerError`;
* :mod:`.scripts`: the bundled Lua scripts (``lua/``), broker and result store alike;
* :mod:`.batcher`: :class:`~.batcher.Batcher`, which sends concurrent calls together;
* :mod:`.sync`: :class:`~.sync.SyncScript`, one script on a thread-safe synchronous pool.

Private: nothing here is part of the public API, and nothing here imports a backend.
"""
