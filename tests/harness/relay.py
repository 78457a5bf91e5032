"""``CuttableRelay``: a TCP relay on loopback whose open connections a test can cut at will.

It stands for what sits between a client and a server in real life (a load balancer that
drops long requests): ``cut()`` closes every connection it carries at that moment, both
ways, while new connections keep going through.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.protocols import portforward


class _Inbound(portforward.ProxyServer):
    factory: _RelayFactory

    def connectionMade(self) -> None:
        self.reactor = self.factory.relay.reactor
        self.factory.relay.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.factory.relay.open.discard(self)
        super().connectionLost(reason)


class _RelayFactory(portforward.ProxyFactory):
    protocol = _Inbound

    def __init__(self, host: str, port: int, relay: CuttableRelay) -> None:
        super().__init__(host, port)
        self.relay = relay


class CuttableRelay:
    """Relays 127.0.0.1:``port`` (a free port) to ``host``:``target_port``; call ``stop`` after."""

    def __init__(self, reactor: Any, host: str, target_port: int) -> None:
        factory = _RelayFactory(host, target_port, self)
        self.reactor = reactor
        self.open: set[_Inbound] = set()
        self.cuts = 0
        self._listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = int(self._listening.getHost().port)

    def url(self, path: str = "") -> str:
        """The relay's http URL, with path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def cut(self) -> int:
        """Abort every connection open now (no FIN handshake, as a dropped link); how many."""
        count = 0
        for inbound in list(self.open):
            count += 1
            if inbound.peer is not None and inbound.peer.transport is not None:
                inbound.peer.transport.abortConnection()
            inbound.transport.abortConnection()
        self.cuts += count
        return count

    async def stop(self) -> None:
        """Stop listening and cut what is still open."""
        self.cut()
        await self._listening.stopListening()
