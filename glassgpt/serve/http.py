"""uvicorn's h11 protocol with a deadline for request headers (slowloris).

uvicorn times out idle keep-alive connections, and the API's BodyLimit middleware times out
slow bodies, but nothing bounds the time a client takes to send a request's head: a new
connection that sends nothing, or one header byte a second, is held forever (and the
keep-alive timer is cancelled by any byte). Many such connections exhaust the server's file
descriptors without a single complete request. Here a head must be complete within
`header_timeout` seconds, counted from the connection's start, or, on a kept-alive
connection, from the first byte of the next request; otherwise the connection is closed
(with a 408 when part of a head had arrived).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutH11(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()  # a fresh connection owes its first head at once (uvicorn arms no timer here)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()  # pipelined bytes of the next head may already be buffered

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        # IDLE: h11 has not yet parsed this cycle's request line and headers.
        return self.conn.their_state is h11.IDLE

    def _watch(self) -> None:
        if not self._waiting_for_head():
            self._disarm()  # the head is complete: the body has its own timeout (BodyLimit)
        elif self._head_timer is None and self.conn.trailing_data[0]:
            self._arm()  # the first bytes of a new head on a kept-alive connection

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        if self.conn.trailing_data[0]:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: 37\r\nconnection: close\r\n\r\nThe request headers came too slowly.\n")
        self.transport.close()


def protocol(header_timeout: float) -> type[HeaderTimeoutH11]:
    """The protocol class to give uvicorn (`http=`), with this header deadline in seconds."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": float(header_timeout)})
