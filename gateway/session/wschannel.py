"""The twilio-ws and pcm-ws agents' WebSocket, written for fifty messages a second each way
per call: websockets' sans-I/O protocol (framing, masking, the opening and closing
handshakes, ping/pong, size limits) under a plain asyncio Protocol.

A message is sent the moment the session builds it (one transport write, no task switch) and
a message from the agent reaches the session from data_received (no reader task, no queue).
websockets' own asyncio connection does the same work through a send lock, a writer task
and an assembler queue per message, which measured (bench/capacity.py, py-spy) as about a
quarter of the media plane's time per call.

On an open connection the data frames themselves skip websockets too (gateway/session/
wsframes.py): ours are framed and masked in one step, and what the agent sends is scanned for
whole text/binary frames; every other frame (ping, close, a fragment, anything odd) is handed
to websockets' protocol whole, at a frame boundary, so it keeps the handshakes and the errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.config import Agent
from gateway.errors import SipedgeError
from gateway.session.wsframes import BINARY, TEXT, MaskKeys, client_frame, scan
from media.timing import LatencyStats

log = logging.getLogger("sipedge.agent")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_BUFFERED_BYTES = 2 * 1024 * 1024  # unsent to an agent that stopped reading: it has failed
CLOSE_TIMEOUT_S = 2.0

Message = str | bytes
Receiver = Callable[[Message, int], None]  # a message and when it arrived (perf_counter_ns)


class AgentUnavailable(SipedgeError):
    """The agent could not be reached; `reason` goes into call.agent.disconnected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChannelClosed(SipedgeError):
    """A send on a channel that has closed; its close reason says why."""


class _Connection(asyncio.Protocol):
    def __init__(self, ws: ClientProtocol) -> None:
        self.ws = ws
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.receiver: Receiver | None = None
        self.on_close: Callable[[], None] | None = None
        self.backlog: list[tuple[Message, int]] = []  # before a receiver is set
        self.mask_keys = MaskKeys()
        # True while websockets' protocol is open and between frames: we scan the agent's
        # bytes ourselves (_scan) and hand it only the frames that are not plain data.
        self.fast = False
        self._pending = b""  # the start of a frame not yet whole (fast path)
        # What websockets read while we did not: the handshake's bytes, then those since the
        # last frame boundary (its parser does not say where it is; we follow along).
        self._head: bytearray | None = bytearray()
        self._behind = bytearray()
        self._lost_track = False  # a frame too big to follow: websockets reads to the end
        self._fragments: list[bytes] = []
        self._fragment_text = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol's end of the closing handshake
                transport.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.fast:
            self._scan(data)
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """websockets reads `data`; we note where its frames end, to take over at one."""
        if self._head is not None:
            self._head += data
        elif not self._lost_track:
            self._behind += data
        self.ws.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.fast = False
        if self._pending:  # a frame cut short: websockets reports it
            self.ws.receive_data(self._pending)
            self._pending = b""
        self.ws.receive_eof()  # may complete a response whose body ran to the end
        self._events()
        return None

    def _scan(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        now = time.perf_counter_ns()
        pos, size = 0, len(data)
        while pos < size:
            frame = scan(data, pos, MAX_MESSAGE_BYTES)
            if frame.end == 0:  # not whole yet
                self._pending = data[pos:]
                return
            if frame.data:
                payload = data[frame.start : frame.end]
                if frame.opcode == BINARY:
                    self._deliver(payload, now)
                    pos = frame.end
                    continue
                try:
                    text = payload.decode()
                except UnicodeDecodeError as exc:
                    self._invalid_text(exc)
                    return  # websockets discards what follows its close
                self._deliver(text, now)
                pos = frame.end
                continue
            if frame.end < 0:  # too big: websockets refuses it
                self._lost_track = True
                self.fast = False
                self._feed(data[pos:])
                return
            self.ws.receive_data(data[pos : frame.end])  # a whole frame, for websockets
            pos = frame.end
            self._events()
            if not self.fast:  # a close, a fragment: websockets reads on
                if pos < size:
                    self._feed(data[pos:])
                return

    def _invalid_text(self, exc: UnicodeDecodeError) -> None:
        """A text message that is not UTF-8 fails the connection (RFC 6455 8.1): websockets'
        protocol leaves that check to the reader, which we are."""
        self.fast = False
        self.ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
        self._lost_track = True
        self.flush()

    def _events(self) -> None:
        ws = self.ws
        events = ws.events_received()
        self.flush()  # pongs, the reply to a close
        now = time.perf_counter_ns()
        for event in events:
            if isinstance(event, Response):
                if not self.handshake.done():
                    if ws.handshake_exc is not None:
                        self.handshake.set_exception(ws.handshake_exc)
                    else:
                        self.handshake.set_result(None)
            elif isinstance(event, Frame):
                self._frame(event, now)
        self.fast = self._between_frames()
        if ws.state is State.CLOSED and self.transport is not None:
            self.transport.close()

    def _between_frames(self) -> bool:
        """websockets is open and has read whole frames only, none of a fragmented message:
        the next bytes may be ours to scan."""
        ws = self.ws
        if ws.state is not State.OPEN or self._lost_track or self.closed.done():
            return False
        if self._head is not None:  # the handshake is done: the frames start after it
            end = self._head.find(b"\r\n\r\n") + 4
            self._behind, self._head = self._head[end:], None
        behind, pos = self._behind, 0
        while pos < len(behind):
            end = scan(behind, pos, MAX_MESSAGE_BYTES).end
            if end <= 0:
                break
            pos = end
        del behind[:pos]
        return not behind and ws.current_size is None

    def _frame(self, frame: Frame, now: int) -> None:
        opcode = frame.opcode
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            data = bytes(frame.data)
            if not frame.fin:
                self._fragments = [data]
                self._fragment_text = opcode is Opcode.TEXT
                return
            self._deliver_whole(data, opcode is Opcode.TEXT, now)
        elif opcode is Opcode.CONT and self._fragments:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver_whole(data, self._fragment_text, now)

    def _deliver_whole(self, data: bytes, text: bool, now: int) -> None:
        if not text:
            self._deliver(data, now)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError as exc:
            self._invalid_text(exc)
            return
        self._deliver(message, now)

    def _deliver(self, message: Message, now: int) -> None:
        if self.receiver is not None:
            self.receiver(message, now)
        else:
            self.backlog.append((message, now))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fast = False
        if not self.handshake.done():
            self.handshake.set_exception(
                ConnectionError(f"closed during the opening handshake: {exc or 'EOF'}")
            )
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close()


class FastWebSocketChannel:
    """An AgentChannel (gateway/session/agent.py) whose `send_now` and `deliver_to` let the
    session skip the sender and reader tasks."""

    codec: str | None = None

    def __init__(self, conn: _Connection, caller_to_agent: LatencyStats, call_id: str) -> None:
        self._conn = conn
        self._caller_to_agent = caller_to_agent
        self._call_id = call_id
        self._failure = ""

    @classmethod
    async def open(
        cls, agent: Agent, caller_to_agent: LatencyStats, call_id: str
    ) -> FastWebSocketChannel:
        try:
            uri = parse_uri(str(agent.url))
        except InvalidURI as exc:
            raise AgentUnavailable(f"connect_failed: {exc}") from exc
        ws = ClientProtocol(uri, max_size=MAX_MESSAGE_BYTES)  # no extensions: no compression
        request = ws.connect()
        for name, value in agent.headers.items():
            request.headers[name] = value.get_secret_value()
        ws.send_request(request)
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if uri.secure else None
        try:
            async with asyncio.timeout(agent.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(ws), uri.host, uri.port, ssl=context
                )
                await conn.handshake
        except TimeoutError as exc:
            raise AgentUnavailable(f"connect_timeout after {agent.connect_timeout:g}s") from exc
        except InvalidStatus as exc:
            raise AgentUnavailable(f"rejected: HTTP {exc.response.status_code}") from exc
        except (OSError, WebSocketException) as exc:
            raise AgentUnavailable(f"connect_failed: {exc}") from exc
        return cls(conn, caller_to_agent, call_id)

    @property
    def is_open(self) -> bool:
        return self._conn.ws.state is State.OPEN and not self._conn.closed.done()

    def send_now(self, message: Message, frame_ns: int = 0) -> None:
        """Write one message; ChannelClosed once the channel has closed or the agent has
        stopped reading (MAX_BUFFERED_BYTES unsent)."""
        conn = self._conn
        if not self.is_open:
            raise ChannelClosed(self.close_reason())
        transport = conn.transport
        assert transport is not None
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            self._failure = "agent_not_reading"
            transport.abort()  # close() would wait for the unsent bytes it will never send
            raise ChannelClosed(self._failure)
        # websockets' send_text/send_binary would build this same frame through a Frame and
        # a BytesIO, and draw its mask key with a system call.
        if isinstance(message, str):
            transport.write(client_frame(TEXT, message.encode(), conn.mask_keys.take()))
        else:
            transport.write(client_frame(BINARY, message, conn.mask_keys.take()))
        if frame_ns:
            self._caller_to_agent.record((time.perf_counter_ns() - frame_ns) / 1e6)

    async def send(self, message: Message, frame_ns: int = 0) -> None:
        self.send_now(message, frame_ns)

    def deliver_to(self, receiver: Receiver, on_close: Callable[[], None]) -> None:
        """From now on every message goes straight to `receiver` (those that came before
        first), and `on_close` is called once when the connection ends."""
        conn = self._conn
        conn.receiver, conn.on_close = receiver, on_close
        backlog, conn.backlog = conn.backlog, []
        for message, now in backlog:
            receiver(message, now)
        if conn.closed.done():
            on_close()

    async def messages(self) -> AsyncIterator[Message]:
        """For a session that reads with a task (the AgentChannel contract)."""
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.deliver_to(lambda message, _now: queue.put_nowait(message),
                        lambda: queue.put_nowait(None))  # fmt: skip
        while (message := await queue.get()) is not None:
            yield message

    def close_reason(self) -> str:
        if self._failure:
            return self._failure
        code = self._conn.ws.close_code
        return f"closed: code {code}" if code is not None else "closed"

    async def close(self) -> None:
        conn = self._conn
        if conn.ws.state is State.OPEN:
            conn.ws.send_close(1000)
            conn.flush()
        try:
            await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.info("event=agent_close_unclean call_id=%s error=timeout", self._call_id)
            if conn.transport is not None:
                conn.transport.abort()  # an agent that never answered our close
