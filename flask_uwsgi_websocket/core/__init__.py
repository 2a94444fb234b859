"""The protocol core: RFC 6455 over a file descriptor, knowing neither Flask nor uWSGI.

- ``framing``: frame headers read and built, payloads unmasked.
- ``connection``: :class:`~.connection.Connection`, the state machine of one
  connection over its socket, driven by a reactor's callbacks.
- ``reactor``: what a flavour's event loop provides (:class:`~.reactor.Reactor`).
- ``handshake``, ``compression``: the opening handshake and permessage-deflate.
- ``options``: :class:`~.options.Options`, the settings of both.
"""
