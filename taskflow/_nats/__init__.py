"""NATS plumbing shared by :class:`~taskflow.brokers.nats.NatsBroker` and
:class:`~taskflow.results.nats.NatsResultStore`, by composition.

* :mod:`.connection`: :class:`~.connection.Connection`, one bounded connection with
  reconnects logged as one line each, JetStream API requests, and the mapping of client
  errors to :class:`~taskflow.errors.BrokerError` naming the masked URL;
* :mod:`.names`: subject tokens and stream names for arbitrary text;
* :mod:`.framing`: what a message's subject and ``Tf-*`` headers say about it, and the
  header blocks the stream API returns.

Private: nothing here is part of the public API, and nothing here imports a backend.
"""
