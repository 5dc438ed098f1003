"""The sans-io protocol: a client and a server Connection talking to each other, no sockets.

``ConnectionPair`` feeds each side's bytes to the other and checks that what
arrives equals what was sent and that both ends agree on the state (h11's
``tests/helpers.py``).  Hand-made frames cover what a well-behaved peer never
sends; hypothesis covers any bytes in any chunking, and every valid message.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
import tracemalloc
from collections.abc import Iterable, Sequence
from typing import Any

import hypothesis
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consoled.frozen import Frozen, replace
from consoled.protocol import (
    CLOSED,
    DEFAULT_MAX_FRAME_SIZE,
    MAX_DATA_CHUNK,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    EncodedOutput,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    State,
)
from consoled.protocol import events as ev
from consoled.protocol.codec import (
    INPUT_PREFIX,
    MAX_ELEMENTS_FROM_CLIENT,
    MAX_ELEMENTS_FROM_SERVER,
    MAX_LIST_LEN,
    MAX_STR_LEN,
    OUTPUT_PREFIX,
    _fields_of,
    decode_body,
    encode_body,
    stream_data_at,
)
from consoled.protocol.connection import Sentinel
from consoled.protocol.elements import count_elements

OTHER = {Role.CLIENT: Role.SERVER, Role.SERVER: Role.CLIENT}
FATAL_CODES = [code for code in ErrorCode if code.fatal]
NON_FATAL_CODES = [code for code in ErrorCode if not code.fatal]


# --- helpers ----------------------------------------------------------------------


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length; empty pieces dropped)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def drain(conn: Connection) -> tuple[list[ev.Event], Sentinel]:
    """Every complete event buffered in ``conn``, and the sentinel that stopped it."""
    got: list[ev.Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, Sentinel):
            return got, event
        got.append(event)


def state_of(conn: Connection) -> State:
    """``conn.state``, read afresh (mypy would keep an earlier narrowing)."""
    return conn.state


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def packed(obj: object) -> bytes:
    """A frame whose body is ``obj`` packed as msgpack, whatever it is."""
    return frame(msgpack.packb(obj))


def wire(event: ev.Event) -> bytes:
    """The frame for ``event``, bypassing any state machine (to play an illegal peer)."""
    return frame(encode_body(event))


class ConnectionPair:
    """A client and a server Connection wired to each other."""

    def __init__(self) -> None:
        self.conn = {Role.CLIENT: Connection(Role.CLIENT), Role.SERVER: Connection(Role.SERVER)}

    @property
    def client(self) -> Connection:
        return self.conn[Role.CLIENT]

    @property
    def server(self) -> Connection:
        return self.conn[Role.SERVER]

    def send(self, role: Role, *events: ev.Event, cuts: Iterable[int] = ()) -> list[ev.Event]:
        """Send ``events`` from ``role``, deliver them in pieces, check they arrive intact."""
        sender, receiver = self.conn[role], self.conn[OTHER[role]]
        data = b"".join(sender.send(event) for event in events)
        got: list[ev.Event] = []
        for piece in split(data, cuts):
            receiver.receive_data(piece)
            more, sentinel = drain(receiver)
            assert sentinel is NEED_DATA
            got.extend(more)
        assert got == list(events)
        assert receiver.buffered == 0
        assert receiver.state is sender.state, "both ends must agree on the state"
        return got

    def states(self) -> tuple[State, State]:
        return self.client.state, self.server.state


WELCOME = ev.Welcome(PROTOCOL_VERSION, "consoled test", 4242)
ATTACHED = ev.Attached("web", ev.SessionState.RUNNING, 24, 80, 0)
INFO = ev.SessionInfo(
    session="web/sh-1",
    id="web",
    exec="sh-1",
    state=ev.SessionState.EXITED,
    clients=2,
    rows=24,
    cols=80,
    created="2026-01-02T03:04:05Z",
    bytes_out=12345,
    exited_at="2026-01-02T04:00:00Z",
    socket=None,
    log_path="/var/log/consoled/web@sh-1.log",
    scrollback_bytes=999,
)


def pair_in(state: str) -> ConnectionPair:
    """A pair driven through legal messages to ``state`` (awaiting: a list_sessions)."""
    pair = ConnectionPair()
    steps: list[tuple[str, Role, ev.Event]] = [
        ("hello_sent", Role.CLIENT, ev.Hello(PROTOCOL_VERSION, "pytest")),
        ("idle", Role.SERVER, WELCOME),
        ("awaiting", Role.CLIENT, ev.ListSessions()),
    ]
    if state in ("streaming", "done"):
        steps[2] = ("awaiting", Role.CLIENT, ev.Attach("web"))
        steps += [
            ("streaming", Role.SERVER, ATTACHED),
            ("done", Role.SERVER, ev.Ended(ev.EndReason.EXITED)),
        ]
    names = ["handshake"] + [name for name, _, _ in steps]
    for name, role, event in steps[: names.index(state)]:
        pair.send(role, event)
        assert pair.states() == (State(name), State(name))
    return pair


# --- strategies: every message, every field ------------------------------------------

texts = st.text(max_size=30)
opt_texts = st.none() | texts
# Everything msgpack can carry as an integer.
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
opt_ints = st.none() | ints
bins = st.binary(max_size=200)
codes = st.sampled_from(ErrorCode)
session_states = st.sampled_from(ev.SessionState)
session_infos = st.builds(
    ev.SessionInfo,
    session=texts,
    id=texts,
    exec=opt_texts,
    state=session_states,
    clients=ints,
    rows=ints,
    cols=ints,
    created=texts,
    bytes_out=ints,
    exited_at=opt_texts,
    socket=opt_texts,
    log_path=opt_texts,
    scrollback_bytes=ints,
    uid=texts,
    exit_code=opt_ints,
)

hellos = st.builds(ev.Hello, version=ints, client=texts)
welcomes = st.builds(ev.Welcome, version=ints, server=texts, pid=ints)
errors = st.builds(ev.Error, code=codes, message=texts)
non_fatal_errors = st.builds(ev.Error, code=st.sampled_from(NON_FATAL_CODES), message=texts)

REQUESTS: dict[type[ev.Event], st.SearchStrategy[ev.Event]] = {
    ev.CreateSocket: st.builds(
        ev.CreateSocket, session=texts, exec_base=opt_texts, ephemeral=st.booleans()
    ),
    ev.ListSessions: st.builds(ev.ListSessions, id=opt_texts),
    ev.GetInfo: st.builds(ev.GetInfo),
    ev.Remove: st.builds(ev.Remove, session=texts, force=st.booleans(), keep_logs=st.booleans()),
    ev.Resize: st.builds(ev.Resize, session=texts, rows=ints, cols=ints),
    ev.Rename: st.builds(ev.Rename, session=texts, new=texts),
    ev.Attach: st.builds(
        ev.Attach,
        session=texts,
        read_only=st.booleans(),
        replay=opt_ints,
        rows=ints,
        cols=ints,
        resume=opt_ints,
        uid=opt_texts,
        screen=st.booleans(),
        history=ints,
    ),
    ev.Logs: st.builds(
        ev.Logs, session=texts, follow=st.booleans(), resume=opt_ints, uid=opt_texts
    ),
    ev.Reexec: st.builds(ev.Reexec),
    ev.Wait: st.builds(ev.Wait, session=texts),
    ev.ReportExit: st.builds(ev.ReportExit, session=texts, exit_code=ints),
}
REPLIES: dict[type[ev.Event], st.SearchStrategy[ev.Event]] = {
    ev.SocketCreated: st.builds(ev.SocketCreated, session=texts, path=texts),
    ev.SessionList: st.builds(
        ev.SessionList,
        sessions=st.lists(session_infos, max_size=4).map(tuple),
        more=st.booleans(),
    ),
    ev.DaemonInfo: st.builds(
        ev.DaemonInfo,
        version=texts,
        pid=ints,
        state_dir=texts,
        control_socket=texts,
        console_socket=texts,
        log_dir=opt_texts,
        sessions=ints,
        size_policy=texts,
        scrollback=ints,
        started=texts,
    ),
    ev.Removed: st.builds(ev.Removed, session=texts, state=session_states),
    ev.Resized: st.builds(ev.Resized, session=texts, rows=ints, cols=ints),
    ev.Renamed: st.builds(ev.Renamed, session=texts, new=texts),
    ev.Attached: st.builds(
        ev.Attached,
        session=texts,
        state=session_states,
        rows=ints,
        cols=ints,
        replay=ints,
        offset=ints,
        uid=texts,
    ),
    ev.Reexeced: st.builds(ev.Reexeced, pid=ints, version=texts, sessions=ints),
    ev.Waited: st.builds(ev.Waited, session=texts, exit_code=opt_ints),
    ev.ExitReported: st.builds(ev.ExitReported, session=texts, exit_code=opt_ints),
}
STREAM_INPUTS: dict[type[ev.Event], st.SearchStrategy[ev.Event]] = {
    ev.Input: st.builds(ev.Input, data=bins),
    ev.WindowSize: st.builds(ev.WindowSize, rows=ints, cols=ints),
    ev.Detach: st.builds(ev.Detach),
}
outputs = st.builds(ev.Output, data=bins)
screens = st.builds(ev.Screen, data=bins, approximate=st.booleans())
endeds = st.builds(
    ev.Ended,
    reason=st.sampled_from(ev.EndReason),
    message=texts,
    resume=opt_ints,
    input=opt_ints,
    exit_code=opt_ints,
)

REPLY_FOR_REQUEST = {
    ev.CreateSocket: ev.SocketCreated,
    ev.ListSessions: ev.SessionList,
    ev.GetInfo: ev.DaemonInfo,
    ev.Remove: ev.Removed,
    ev.Resize: ev.Resized,
    ev.Rename: ev.Renamed,
    ev.Attach: ev.Attached,
    ev.Logs: ev.Attached,
    ev.Reexec: ev.Reexeced,
    ev.Wait: ev.Waited,
    ev.ReportExit: ev.ExitReported,
}
any_request = st.one_of(*REQUESTS.values())
any_client_message = st.one_of(hellos, any_request, *STREAM_INPUTS.values())
any_server_message = st.one_of(welcomes, errors, *REPLIES.values(), outputs, screens, endeds)

cut_points = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


def test_strategies_cover_every_message() -> None:
    covered = {
        ev.Hello,
        ev.Welcome,
        ev.Error,
        ev.Output,
        ev.Screen,
        ev.Ended,
        *REQUESTS,
        *REPLIES,
        *STREAM_INPUTS,
    }
    assert covered == set(ev.ALL_EVENTS)
    assert set(REQUESTS) == set(ev.CLIENT_REQUESTS)
    assert set(STREAM_INPUTS) == set(ev.STREAM_INPUTS)


# --- the happy paths -------------------------------------------------------------------


def test_handshake() -> None:
    pair = ConnectionPair()
    assert pair.states() == (State.HANDSHAKE, State.HANDSHAKE)
    pair.send(Role.CLIENT, ev.Hello(PROTOCOL_VERSION, "pytest"))
    assert pair.states() == (State.HELLO_SENT, State.HELLO_SENT)
    pair.send(Role.SERVER, WELCOME)
    assert pair.states() == (State.IDLE, State.IDLE)


def test_pipelined_request_is_answered_after_the_welcome() -> None:
    """hello and the first request in one write: the welcome, then the reply."""
    pair = ConnectionPair()
    pair.send(Role.CLIENT, ev.Hello(PROTOCOL_VERSION, "pytest"), ev.GetInfo())
    assert pair.states() == (State.HELLO_SENT, State.HELLO_SENT)
    pair.send(Role.SERVER, WELCOME)
    assert pair.states() == (State.AWAITING, State.AWAITING)
    pair.send(Role.SERVER, ev.DaemonInfo("v", 1, "", "", "", None, 0, "latest", 0))
    assert pair.states() == (State.IDLE, State.IDLE)


def test_pipelined_attach_streams_after_the_welcome() -> None:
    pair = ConnectionPair()
    pair.send(Role.CLIENT, ev.Hello(PROTOCOL_VERSION, "pytest"), ev.Attach("web", replay=0))
    pair.send(Role.SERVER, WELCOME, ATTACHED)
    assert pair.states() == (State.STREAMING, State.STREAMING)


def test_only_one_request_may_be_pipelined() -> None:
    pair = ConnectionPair()
    pair.send(Role.CLIENT, ev.Hello(PROTOCOL_VERSION, "pytest"), ev.GetInfo())
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ListSessions())
    # The server refuses a second one too, however it arrives.
    pair.server.receive_data(wire(ev.ListSessions()))
    with pytest.raises(RemoteProtocolError):
        pair.server.next_event()


def test_pipelined_request_after_a_refused_hello_is_over() -> None:
    pair = ConnectionPair()
    pair.send(Role.CLIENT, ev.Hello(PROTOCOL_VERSION + 1, "pytest"), ev.GetInfo())
    pair.send(Role.SERVER, ev.Error(ErrorCode.UNSUPPORTED_VERSION, "speak 1"))
    assert pair.states() == (State.DONE, State.DONE)


def test_hello_defaults_round_trip() -> None:
    pair = ConnectionPair()
    [hello] = pair.send(Role.CLIENT, ev.Hello(7))
    assert hello == ev.Hello(7, "")


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (ev.CreateSocket("web"), ev.SocketCreated("web", "/run/consoled/s/web.sock")),
        (
            ev.CreateSocket("web", exec_base="bash"),
            ev.SocketCreated("web/bash-1", "/run/consoled/s/web@bash-1.sock"),
        ),
        (ev.ListSessions(), ev.SessionList((INFO,))),
        (ev.ListSessions(id="web"), ev.SessionList(())),
        (
            ev.GetInfo(),
            ev.DaemonInfo(
                "0.1.0",
                77,
                "/run/consoled",
                "/run/consoled/control.sock",
                "/run/consoled/console.sock",
                None,
                3,
                "latest",
                1 << 20,
            ),
        ),
        (ev.Remove("web"), ev.Removed("web", ev.SessionState.EXITED)),
        (ev.Remove("web/sh-1", force=True), ev.Removed("web/sh-1", ev.SessionState.RUNNING)),
        (ev.Resize("web", 50, 132), ev.Resized("web", 50, 132)),
        (ev.Rename("unnamed-1", "db"), ev.Renamed("unnamed-1", "db")),
    ],
)
def test_request_and_reply_round_trip(request_: ev.Event, reply: ev.Event) -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, request_)
    assert pair.states() == (State.AWAITING, State.AWAITING)
    pair.send(Role.SERVER, reply)
    assert pair.states() == (State.IDLE, State.IDLE)
    # The connection takes the next request.
    pair.send(Role.CLIENT, ev.GetInfo())
    assert pair.states() == (State.AWAITING, State.AWAITING)


def test_session_list_pages_keep_awaiting_until_the_last() -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.ListSessions())
    pages = [ev.SessionList((INFO,) * 3, more=True), ev.SessionList((), more=True)]
    for page in pages:
        pair.send(Role.SERVER, page)
        assert pair.states() == (State.AWAITING, State.AWAITING)
    # A request while pages are still coming is pipelining: refused.
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.GetInfo())
    pair.send(Role.SERVER, ev.SessionList((INFO,), more=False))
    assert pair.states() == (State.IDLE, State.IDLE)


def test_session_list_pages_then_error_returns_to_idle() -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.ListSessions())
    pair.send(Role.SERVER, ev.SessionList((INFO,), more=True))
    pair.send(Role.SERVER, ev.Error(ErrorCode.INTERNAL, "gave up"))
    assert pair.states() == (State.IDLE, State.IDLE)


def test_attach_stream_to_done() -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.Attach("web", read_only=False, replay=100, rows=24, cols=80))
    assert pair.states() == (State.AWAITING, State.AWAITING)
    pair.send(Role.SERVER, ev.Attached("web", ev.SessionState.RUNNING, 24, 80, 100))
    assert pair.states() == (State.STREAMING, State.STREAMING)
    pair.send(Role.SERVER, ev.Output(b"replayed"), ev.Output(b"\x00\xff live"))
    pair.send(Role.CLIENT, ev.Input(b"ls\r"), ev.WindowSize(30, 100))
    # A non-fatal error inside the stream does not end it.
    pair.send(Role.SERVER, ev.Error(ErrorCode.INVALID_SIZE, "rows must be..."))
    assert pair.states() == (State.STREAMING, State.STREAMING)
    pair.send(Role.SERVER, ev.Output(b"x" * MAX_DATA_CHUNK))
    pair.send(Role.CLIENT, ev.Detach())
    assert pair.states() == (State.STREAMING, State.STREAMING)
    pair.send(Role.SERVER, ev.Ended(ev.EndReason.DETACHED, "bye"))
    assert pair.states() == (State.DONE, State.DONE)
    # Nothing more may come from the server.
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.Output(b"late"))


@pytest.mark.parametrize(
    "size",
    [0, 1, 255, 256, 65535, 65536, MAX_DATA_CHUNK - 1, MAX_DATA_CHUNK, MAX_DATA_CHUNK + 1,
     2 * MAX_DATA_CHUNK + 3],
)  # fmt: skip
def test_encoded_output_is_exactly_the_output_messages(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    pieces = [data[i : i + MAX_DATA_CHUNK] for i in range(0, size, MAX_DATA_CHUNK)] or [b""]
    pair = pair_in("streaming")
    expected = b"".join(wire(ev.Output(p)) for p in pieces)
    encoded = EncodedOutput(data)
    assert encoded.size == len(encoded) == size
    sent = pair.server.send_encoded(encoded)
    assert sent == expected, "the same bytes as sending each piece as an output message"
    pair.client.receive_data(sent)
    got, sentinel = drain(pair.client)
    assert sentinel is NEED_DATA
    assert got == [ev.Output(p) for p in pieces]
    assert all(len(e.data) <= MAX_DATA_CHUNK for e in got if isinstance(e, ev.Output))


@given(st.binary(max_size=2000))
def test_encoded_output_round_trips(data: bytes) -> None:
    pair = pair_in("streaming")
    pair.client.receive_data(pair.server.send_encoded(EncodedOutput(data)))
    assert drain(pair.client) == ([ev.Output(data)], NEED_DATA)


@pytest.mark.parametrize("kind", [ev.Output, ev.Input])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, MAX_DATA_CHUNK])
def test_stream_data_is_encoded_as_msgpack_packs_its_map(kind: type[ev.Event], size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    event = kind(data)  # type: ignore[call-arg]
    body = encode_body(event)
    assert body == msgpack.packb({"type": event.TYPE, "data": data})
    assert stream_data_at(body, 0, len(body)) == (kind, len(body) - size), "the quick path"


def _bin(data: bytes, width: int) -> bytes:
    marker = {1: b"\xc4", 2: b"\xc5", 4: b"\xc6"}[width]
    return marker + (len(data) % (1 << (8 * width))).to_bytes(width, "big") + data


#: Bodies around the usual ``output``/``input`` layout: the layout itself,
#: longer ``bin`` headers than needed, and near misses (a wrong length, other
#: key orders, extra keys, another type, stray bytes).
stream_bodies = st.one_of(
    st.builds(
        lambda name, data, width, tail: (
            b"\x82\xa4type" + msgpack.packb(name) + b"\xa4data" + _bin(data, width) + tail
        ),
        st.sampled_from(["output", "input", "screen", "outpu"]),
        st.binary(max_size=300),
        st.sampled_from([1, 2, 4]),
        st.sampled_from([b"", b"", b"x", b"\x00"]),
    ),
    st.builds(
        lambda name, data, cut: msgpack.packb({"type": name, "data": data})[:cut],
        st.sampled_from(["output", "input"]),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=400),
    ),
    st.builds(
        lambda name, data, more: msgpack.packb({"data": data, "type": name, **more}),
        st.sampled_from(["output", "input"]),
        st.binary(max_size=50),
        st.dictionaries(st.sampled_from(["x", "data2"]), st.integers(0, 1000), max_size=1),
    ),
)


@settings(max_examples=600)
@given(stream_bodies)
def test_the_quick_stream_decoder_agrees_with_the_generic_one(body: bytes) -> None:
    """Whatever body the quick path takes, the generic decoder makes the same message of it."""
    found = stream_data_at(body, 0, len(body))
    if found is None:
        return
    kind, at = found
    assert decode_body(body, DEFAULT_MAX_FRAME_SIZE, MAX_ELEMENTS_FROM_CLIENT) == kind(
        body[at:]  # type: ignore[call-arg]
    )


def _read_all(conn: Connection, stream: bytes, cut: int) -> list[object]:
    """What ``conn`` makes of ``stream`` fed in pieces of ``cut`` bytes: its
    events, then the error that stopped it (its code), if any."""
    got: list[object] = []
    try:
        for at in range(0, len(stream), cut):
            conn.receive_data(stream[at : at + cut])
            got += drain(conn)[0]
    except RemoteProtocolError as exc:
        got.append(exc.code)
    return got


@settings(max_examples=300)
@given(
    st.lists(stream_bodies, min_size=1, max_size=6),
    st.sampled_from([ev.Output, ev.Input]),
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=-3, max_value=3),
)
def test_a_streaming_connection_reads_stream_data_as_the_generic_path_does(
    bodies: list[bytes], kind: type[ev.Event], cut: int, skew: int
) -> None:
    """A streaming connection's one-call path for the peer's stream data
    gives the events (and errors) the generic path gives, frame lengths that
    lie included."""
    stream = b"".join(frame(b) for b in bodies[:-1])
    last = bodies[-1]
    stream += max(0, len(last) + skew).to_bytes(4, "big") + last
    got = []
    for quick in (True, False):
        pair = pair_in("streaming")
        receiver = pair.client if kind is ev.Output else pair.server
        receiver._quick = quick  # False: the generic path alone
        got.append(_read_all(receiver, stream, cut))
    assert got[0] == got[1]


@pytest.mark.parametrize("kind", [ev.Output, ev.Input])
def test_stream_data_in_another_layout_is_still_understood(kind: type[ev.Event]) -> None:
    pair = pair_in("streaming")
    receiver = pair.client if kind is ev.Output else pair.server
    body = msgpack.packb({"data": b"hi", "type": kind.TYPE, "later": 1})
    long_header = (OUTPUT_PREFIX if kind is ev.Output else INPUT_PREFIX) + b"\xc6\x00\x00\x00\x02hi"
    receiver.receive_data(frame(body) + frame(long_header))
    assert drain(receiver) == ([kind(b"hi"), kind(b"hi")], NEED_DATA)  # type: ignore[call-arg]


def test_a_logs_streams_output_says_where_it_stands() -> None:
    """``output.offset`` and ``output.cursor`` (a ``logs`` stream's) go the
    generic way, both ends; an ``output`` with neither is the quick layout."""
    pair = pair_in("streaming")
    sent = [
        ev.Output(b"line\n", offset=1 << 40),
        ev.Output(b"", offset=0),
        ev.Output(b"x"),
        ev.Output(b"from a file\n", cursor="f1.2.3.11"),
        ev.Output(b"x"),
    ]
    pair.client.receive_data(b"".join(pair.server.send(e) for e in sent))
    assert drain(pair.client) == (sent, NEED_DATA)
    assert wire(ev.Output(b"x")).endswith(OUTPUT_PREFIX + b"\xc4\x01x"), "no offset: as ever"


def test_stream_data_out_of_place_is_still_refused() -> None:
    """The quick path decodes; the state machine still rules (no output before streaming)."""
    pair = pair_in("idle")
    pair.client.receive_data(wire(ev.Output(b"early")))
    with pytest.raises(RemoteProtocolError, match="may not send 'output' in state idle"):
        pair.client.next_event()
    pair = pair_in("idle")
    pair.server.receive_data(wire(ev.Input(b"early")))
    with pytest.raises(RemoteProtocolError, match="may not send 'input' in state idle"):
        pair.server.next_event()


@pytest.mark.parametrize("state", ["handshake", "idle", "awaiting", "done"])
def test_encoded_output_only_while_streaming(state: str) -> None:
    pair = pair_in(state)
    with pytest.raises(LocalProtocolError, match="may not send 'output'"):
        pair.server.send_encoded(EncodedOutput(b"x"))
    assert pair.server.state is State(state), "a refused send changes nothing"


def test_a_client_may_not_send_encoded_output() -> None:
    pair = pair_in("streaming")
    with pytest.raises(LocalProtocolError, match="client may not send 'output'"):
        pair.client.send_encoded(EncodedOutput(b"x"))


def test_logs_stream_to_done() -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.Logs("web", follow=True))
    pair.send(Role.SERVER, ev.Attached("web", ev.SessionState.RUNNING, 0, 0, 0))
    assert pair.states() == (State.STREAMING, State.STREAMING)
    pair.send(Role.SERVER, ev.Output(b"line\n"))
    pair.send(Role.CLIENT, ev.Detach())
    pair.send(Role.SERVER, ev.Ended(ev.EndReason.DETACHED))
    assert pair.states() == (State.DONE, State.DONE)


def test_logs_refused_then_next_request() -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.Logs("nope"))
    pair.send(Role.SERVER, ev.Error(ErrorCode.UNKNOWN_SESSION, "no session 'nope'"))
    assert pair.states() == (State.IDLE, State.IDLE)
    # The refused logs request did not leave a pending Attached behind.
    pair.send(Role.CLIENT, ev.Remove("web"))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ATTACHED)
    pair.send(Role.SERVER, ev.Removed("web", ev.SessionState.EXITED))


def test_stream_inputs_that_cross_ended_are_dropped_by_the_server() -> None:
    pair = pair_in("streaming")
    ended = pair.server.send(ev.Ended(ev.EndReason.EXITED))
    assert pair.server.state is State.DONE
    # The client has not seen `ended` yet: its inputs are legal when it sends them.
    late = b"".join(
        pair.client.send(e) for e in (ev.Input(b"typed"), ev.WindowSize(1, 2), ev.Detach())
    )
    assert pair.client.state is State.STREAMING
    pair.server.receive_data(late)
    assert pair.server.next_event() is NEED_DATA
    assert pair.server.buffered == 0
    assert pair.server.state is State.DONE
    pair.client.receive_data(ended)
    assert pair.client.next_event() == ev.Ended(ev.EndReason.EXITED)
    assert state_of(pair.client) is State.DONE
    pair.server.receive_data(b"")
    assert pair.server.next_event() is CLOSED
    assert pair.server.next_event() is CLOSED


def test_dropping_after_ended_is_only_for_stream_inputs() -> None:
    pair = pair_in("done")
    pair.server.receive_data(wire(ev.Input(b"late")) + wire(ev.ListSessions()))
    with pytest.raises(RemoteProtocolError) as excinfo:
        pair.server.next_event()
    assert excinfo.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert pair.server.state is State.ERROR


def test_inputs_after_a_fatal_error_in_a_stream_are_dropped() -> None:
    # After a fatal error in a stream the server is DONE; late inputs are skipped
    # and next_event keeps going to the end of the buffer.
    pair = pair_in("streaming")
    pair.server.send(ev.Error(ErrorCode.SHUTTING_DOWN, "stopping"))
    pair.server.receive_data(wire(ev.Input(b"a")) * 50)
    assert pair.server.next_event() is NEED_DATA
    assert pair.server.buffered == 0


@pytest.mark.parametrize("code", NON_FATAL_CODES)
def test_non_fatal_error_returns_to_idle(code: ErrorCode) -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.Attach("web"))
    pair.send(Role.SERVER, ev.Error(code, "no"))
    assert pair.states() == (State.IDLE, State.IDLE)
    pair.send(Role.CLIENT, ev.GetInfo())
    assert pair.states() == (State.AWAITING, State.AWAITING)


@pytest.mark.parametrize("code", FATAL_CODES)
@pytest.mark.parametrize("state", ["handshake", "hello_sent", "idle", "awaiting", "streaming"])
def test_fatal_error_ends_the_connection(state: str, code: ErrorCode) -> None:
    pair = pair_in(state)
    pair.send(Role.SERVER, ev.Error(code, "closing"))
    assert pair.states() == (State.DONE, State.DONE)
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.GetInfo())
    with pytest.raises(LocalProtocolError):
        pair.server.send(WELCOME)


def test_server_reports_a_remote_error_with_a_fatal_error() -> None:
    pair = pair_in("idle")
    pair.server.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError) as excinfo:
        pair.server.next_event()
    assert pair.server.state is State.ERROR
    data = pair.server.send(ev.Error(excinfo.value.code, excinfo.value.message))
    assert state_of(pair.server) is State.DONE
    pair.client.receive_data(data)
    assert pair.client.next_event() == ev.Error(ErrorCode.BAD_FRAME, "empty frame")
    assert pair.client.state is State.DONE


# --- illegal messages ---------------------------------------------------------------------

ILLEGAL: list[tuple[str, Role, ev.Event]] = [
    ("handshake", Role.CLIENT, ev.ListSessions()),
    ("handshake", Role.CLIENT, ev.Input(b"x")),
    ("handshake", Role.SERVER, WELCOME),
    ("handshake", Role.SERVER, ev.Error(ErrorCode.INVALID_NAME, "non-fatal before hello")),
    ("hello_sent", Role.CLIENT, ev.Hello(1)),
    ("hello_sent", Role.CLIENT, ev.Input(b"x")),
    ("hello_sent", Role.SERVER, ev.SessionList(())),
    ("hello_sent", Role.SERVER, ev.Error(ErrorCode.INTERNAL, "non-fatal before welcome")),
    ("idle", Role.CLIENT, ev.Hello(1)),
    ("idle", Role.CLIENT, ev.Input(b"x")),
    ("idle", Role.CLIENT, ev.Detach()),
    ("idle", Role.CLIENT, WELCOME),
    ("idle", Role.CLIENT, ev.Output(b"x")),
    ("idle", Role.CLIENT, ev.Error(ErrorCode.BAD_FRAME, "clients do not send errors")),
    ("idle", Role.CLIENT, ev.Error(ErrorCode.INTERNAL, "clients do not send errors")),
    ("idle", Role.SERVER, WELCOME),
    ("idle", Role.SERVER, ev.SessionList(())),
    ("idle", Role.SERVER, ev.Output(b"x")),
    ("idle", Role.SERVER, ev.Ended(ev.EndReason.EXITED)),
    ("idle", Role.SERVER, ev.Error(ErrorCode.INTERNAL, "no request pending")),
    ("idle", Role.SERVER, ev.Hello(1)),
    ("idle", Role.SERVER, ev.GetInfo()),
    ("awaiting", Role.CLIENT, ev.GetInfo()),
    ("awaiting", Role.CLIENT, ev.Input(b"x")),
    ("awaiting", Role.SERVER, ev.Removed("web", ev.SessionState.EXITED)),
    ("awaiting", Role.SERVER, ATTACHED),
    ("awaiting", Role.SERVER, ev.DaemonInfo("v", 1, "", "", "", None, 0, "latest", 0)),
    ("awaiting", Role.SERVER, ev.Output(b"x")),
    ("awaiting", Role.SERVER, ev.Ended(ev.EndReason.EXITED)),
    ("streaming", Role.CLIENT, ev.ListSessions()),
    ("streaming", Role.CLIENT, ev.Hello(1)),
    ("streaming", Role.CLIENT, ev.Output(b"x")),
    ("streaming", Role.SERVER, ATTACHED),
    ("streaming", Role.SERVER, ev.SessionList(())),
    ("streaming", Role.SERVER, ev.Input(b"x")),
    ("done", Role.CLIENT, ev.ListSessions()),
    ("done", Role.CLIENT, ev.Hello(1)),
    ("done", Role.SERVER, ev.Output(b"x")),
    ("done", Role.SERVER, ev.Ended(ev.EndReason.EXITED)),
    ("done", Role.SERVER, ev.Error(ErrorCode.INTERNAL, "non-fatal after the end")),
]


def _illegal_id(case: tuple[str, Role, ev.Event]) -> str:
    state, role, event = case
    return f"{state}-{role.value}-{event.TYPE}"


@pytest.mark.parametrize("case", ILLEGAL, ids=_illegal_id)
def test_sending_an_illegal_message_is_local_error_without_state_change(
    case: tuple[str, Role, ev.Event],
) -> None:
    state, role, event = case
    pair = pair_in(state)
    before = pair.states()
    with pytest.raises(LocalProtocolError) as excinfo:
        pair.conn[role].send(event)
    assert excinfo.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert event.TYPE in excinfo.value.message
    assert pair.states() == before
    # Still usable: the legal next step works on both ends.
    if state == "awaiting":
        pair.send(Role.SERVER, ev.SessionList(()))
        assert pair.states() == (State.IDLE, State.IDLE)
    elif state == "idle":
        pair.send(Role.CLIENT, ev.GetInfo())
        assert pair.states() == (State.AWAITING, State.AWAITING)
    elif state == "handshake":
        pair.send(Role.CLIENT, ev.Hello(1))
        assert pair.states() == (State.HELLO_SENT, State.HELLO_SENT)


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just(Role.CLIENT), any_client_message),
            st.tuples(st.just(Role.SERVER), any_server_message),
        ),
        max_size=16,
    )
)
def test_whatever_one_end_may_send_the_other_accepts(steps: list[tuple[Role, ev.Event]]) -> None:
    """Both ends run one machine: no sequence makes them disagree (pipelining included)."""
    pair = ConnectionPair()
    for role, event in steps:
        sender, receiver = pair.conn[role], pair.conn[OTHER[role]]
        before = pair.states()
        try:
            data = sender.send(event)
        except LocalProtocolError:
            assert pair.states() == before
            continue
        receiver.receive_data(data)
        got, sentinel = drain(receiver)  # never a RemoteProtocolError
        assert sentinel is NEED_DATA
        # Stream input that crossed the end of the stream is dropped, nothing else.
        assert got == [event] or (got == [] and isinstance(event, ev.STREAM_INPUTS))
        assert pair.client.state is pair.server.state


def test_sending_a_non_message_is_local_error() -> None:
    pair = pair_in("idle")
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Event())
    assert pair.states() == (State.IDLE, State.IDLE)


@pytest.mark.parametrize("case", ILLEGAL, ids=_illegal_id)
def test_receiving_an_illegal_message_is_remote_error_and_stays_error(
    case: tuple[str, Role, ev.Event],
) -> None:
    state, role, event = case
    pair = pair_in(state)
    receiver = pair.conn[OTHER[role]]
    receiver.receive_data(wire(event))
    with pytest.raises(RemoteProtocolError) as excinfo:
        receiver.next_event()
    assert excinfo.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert excinfo.value.code.fatal
    assert receiver.state is State.ERROR
    # Whatever arrives afterwards, even a perfectly legal message, is not looked at.
    receiver.receive_data(wire(ev.Output(b"x") if role is Role.SERVER else ev.Detach()))
    with pytest.raises(RemoteProtocolError):
        receiver.next_event()
    assert receiver.state is State.ERROR
    receiver.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        receiver.next_event()


# --- framing ------------------------------------------------------------------------------


def expect_remote(conn: Connection, code: ErrorCode) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as excinfo:
        conn.next_event()
    assert excinfo.value.code is code, excinfo.value.message
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    return excinfo.value


def test_zero_length_frame() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b"\x00\x00\x00\x00" + wire(ev.Hello(1)))
    expect_remote(conn, ErrorCode.BAD_FRAME)


@pytest.mark.parametrize("size", [DEFAULT_MAX_FRAME_SIZE + 1, 1 << 24, (1 << 32) - 1])
def test_oversized_frame_refused_from_its_header_alone(size: int) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(size.to_bytes(4, "big"))
    assert conn.buffered == 4
    error = expect_remote(conn, ErrorCode.FRAME_TOO_LARGE)
    assert str(size) in error.message


def test_frame_size_limit_is_exact() -> None:
    body = encode_body(ev.Input(b"z" * 1000))
    at_limit = Connection(Role.SERVER, max_frame_size=len(body))
    at_limit.receive_data(wire(ev.Hello(1)) + frame(body)[:-1])
    assert at_limit.next_event() == ev.Hello(1)
    assert at_limit.next_event() is NEED_DATA
    over = Connection(Role.SERVER, max_frame_size=len(body) - 1)
    over.receive_data(frame(body)[:4])
    expect_remote(over, ErrorCode.FRAME_TOO_LARGE)


def test_largest_frame_with_default_limit_is_accepted() -> None:
    pair = pair_in("streaming")
    big = ev.Input(b"\x00" * (DEFAULT_MAX_FRAME_SIZE - 64))
    data = pair.client.send(big)
    assert len(data) - 4 <= DEFAULT_MAX_FRAME_SIZE
    pair.server.receive_data(data)
    assert pair.server.next_event() == big


def test_header_and_body_arrive_byte_by_byte() -> None:
    conn = Connection(Role.SERVER)
    data = wire(ev.Hello(1, "slow"))
    for i in range(len(data) - 1):
        conn.receive_data(data[i : i + 1])
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == i + 1
    conn.receive_data(data[-1:])
    assert conn.next_event() == ev.Hello(1, "slow")
    assert conn.buffered == 0


def test_several_frames_in_one_read() -> None:
    pair = pair_in("streaming")
    conn = pair.client
    outputs = [ev.Output(bytes([i]) * i) for i in range(20)]
    conn.receive_data(b"".join(wire(o) for o in outputs) + wire(ev.Ended(ev.EndReason.LAGGED)))
    got, sentinel = drain(conn)
    assert got == [*outputs, ev.Ended(ev.EndReason.LAGGED)]
    assert sentinel is NEED_DATA
    assert conn.state is State.DONE


def test_eof_between_frames_is_closed() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(wire(ev.Hello(1)))
    conn.receive_data(b"")
    assert conn.next_event() == ev.Hello(1)
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED


@pytest.mark.parametrize("keep", [1, 3, 4, 5, -1])
def test_eof_inside_a_frame(keep: int) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(wire(ev.Hello(1, "cut short"))[:keep])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    expect_remote(conn, ErrorCode.BAD_FRAME)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x82\xa4type",  # a map cut short
        msgpack.packb({"type": "hello", "version": 1}) + b"\x00",  # trailing data
        b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
    ],
)
def test_body_that_is_not_msgpack(body: bytes) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(frame(body))
    expect_remote(conn, ErrorCode.BAD_FRAME)


@pytest.mark.parametrize("obj", [[1, 2], 5, "hello", None, True, b"hello", 1.5])
def test_body_that_is_not_a_map(obj: object) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(packed(obj))
    error = expect_remote(conn, ErrorCode.BAD_MESSAGE)
    assert "map" in error.message


@pytest.mark.parametrize(
    "obj",
    [{"version": 1}, {"type": 5, "version": 1}, {"type": b"hello", "version": 1}, {"type": None}],
)
def test_message_without_a_string_type(obj: dict[str, object]) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(packed(obj))
    expect_remote(conn, ErrorCode.BAD_MESSAGE)


@pytest.mark.parametrize("name", ["hullo", "", "Hello", "output " * 20])
def test_unknown_message_type(name: str) -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(packed({"type": name, "version": 1}))
    error = expect_remote(conn, ErrorCode.BAD_MESSAGE)
    assert repr(name[:64]) in error.message


def test_extension_types_and_non_string_keys_are_refused() -> None:
    for obj in (
        {"type": "hello", "version": msgpack.ExtType(1, b"x")},
        {"type": "hello", "version": 1, 7: "int key"},
    ):
        conn = Connection(Role.SERVER)
        conn.receive_data(packed(obj))
        with pytest.raises(RemoteProtocolError) as excinfo:
            conn.next_event()
        assert excinfo.value.code.fatal
        assert conn.state is State.ERROR


SESSION_MAP: dict[str, object] = {
    "session": "web",
    "id": "web",
    "exec": None,
    "state": "running",
    "clients": 0,
    "rows": 24,
    "cols": 80,
    "created": "2026-01-01T00:00:00Z",
    "bytes_out": 0,
}


def _without(d: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in d.items() if k != key}


# (state, receiving role, body, the field the error must name)
BAD_FIELDS: list[tuple[str, Role, dict[str, object], str]] = [
    ("handshake", Role.SERVER, {"type": "hello", "version": True}, "version"),
    ("handshake", Role.SERVER, {"type": "hello", "version": False}, "version"),
    ("handshake", Role.SERVER, {"type": "hello", "version": "1"}, "version"),
    ("handshake", Role.SERVER, {"type": "hello", "version": 1.0}, "version"),
    ("handshake", Role.SERVER, {"type": "hello", "version": None}, "version"),
    ("handshake", Role.SERVER, {"type": "hello"}, "version"),
    ("handshake", Role.SERVER, {"type": "hello", "version": 1, "client": 5}, "client"),
    ("handshake", Role.SERVER, {"type": "hello", "version": 1, "client": b"x"}, "client"),
    ("idle", Role.SERVER, {"type": "remove", "session": "a", "force": 1}, "force"),
    ("idle", Role.SERVER, {"type": "remove", "session": "a", "force": 0}, "force"),
    ("idle", Role.SERVER, {"type": "remove", "session": "a", "force": None}, "force"),
    ("idle", Role.SERVER, {"type": "remove", "force": True}, "session"),
    ("idle", Role.SERVER, {"type": "resize", "session": "a", "rows": True, "cols": 1}, "rows"),
    ("idle", Role.SERVER, {"type": "resize", "session": "a", "rows": 1}, "cols"),
    ("idle", Role.SERVER, {"type": "attach", "session": "a", "replay": False}, "replay"),
    ("idle", Role.SERVER, {"type": "attach", "session": "a", "read_only": 1}, "read_only"),
    ("idle", Role.SERVER, {"type": "attach", "session": b"a"}, "session"),
    ("idle", Role.SERVER, {"type": "create_socket", "session": "a", "exec_base": 5}, "exec_base"),
    ("idle", Role.SERVER, {"type": "list_sessions", "id": []}, "id"),
    ("idle", Role.SERVER, {"type": "rename", "session": "a"}, "new"),
    ("idle", Role.SERVER, {"type": "logs", "session": "a", "follow": "yes"}, "follow"),
    ("streaming", Role.SERVER, {"type": "input", "data": "text"}, "data"),
    ("streaming", Role.SERVER, {"type": "input"}, "data"),
    ("streaming", Role.SERVER, {"type": "window_size", "rows": 24}, "cols"),
    ("streaming", Role.SERVER, {"type": "window_size", "rows": 24, "cols": 8.0}, "cols"),
    ("hello_sent", Role.CLIENT, {"type": "welcome", "version": 1, "server": "s"}, "pid"),
    (
        "hello_sent",
        Role.CLIENT,
        {"type": "welcome", "version": 1, "server": "s", "pid": True},
        "pid",
    ),
    ("awaiting", Role.CLIENT, {"type": "session_list", "sessions": {}}, "sessions"),
    ("awaiting", Role.CLIENT, {"type": "session_list", "sessions": [1]}, "sessions[0]"),
    ("awaiting", Role.CLIENT, {"type": "session_list", "sessions": [], "more": 0}, "more"),
    ("awaiting", Role.CLIENT, {"type": "session_list"}, "sessions"),
    (
        "awaiting",
        Role.CLIENT,
        {"type": "session_list", "sessions": [SESSION_MAP, _without(SESSION_MAP, "clients")]},
        "sessions[1].clients",
    ),
    (
        "awaiting",
        Role.CLIENT,
        {"type": "session_list", "sessions": [{**SESSION_MAP, "state": "zombie"}]},
        "sessions[0].state",
    ),
    (
        "awaiting",
        Role.CLIENT,
        {"type": "session_list", "sessions": [{**SESSION_MAP, "rows": True}]},
        "sessions[0].rows",
    ),
    ("awaiting", Role.CLIENT, {"type": "error", "code": "nope", "message": ""}, "code"),
    ("awaiting", Role.CLIENT, {"type": "error", "code": "internal"}, "message"),
    ("streaming", Role.CLIENT, {"type": "ended", "reason": "bored"}, "reason"),
    ("streaming", Role.CLIENT, {"type": "ended", "reason": 1}, "reason"),
    ("streaming", Role.CLIENT, {"type": "output", "data": None}, "data"),
]


@pytest.mark.parametrize(
    ("state", "role", "body", "field"), BAD_FIELDS, ids=[repr(c[2])[:60] for c in BAD_FIELDS]
)
def test_bad_field_is_bad_message(
    state: str, role: Role, body: dict[str, object], field: str
) -> None:
    conn = pair_in(state).conn[role]
    conn.receive_data(packed(body))
    error = expect_remote(conn, ErrorCode.BAD_MESSAGE)
    assert repr(field) in error.message


@pytest.mark.parametrize(
    ("state", "role", "body", "expected"),
    [
        (
            "handshake",
            Role.SERVER,
            {"type": "hello", "version": 1, "client": "x", "v2_field": [1, {"a": b"b"}], "z": None},
            ev.Hello(1, "x"),
        ),
        (
            "awaiting",
            Role.CLIENT,
            {"type": "session_list", "sessions": [{**SESSION_MAP, "future": 1}], "page": 3},
            ev.SessionList(
                (
                    ev.SessionInfo(
                        "web",
                        "web",
                        None,
                        ev.SessionState.RUNNING,
                        0,
                        24,
                        80,
                        "2026-01-01T00:00:00Z",
                        0,
                    ),
                )
            ),
        ),
        (
            "idle",
            Role.SERVER,
            {"type": "attach", "session": "a", "replay": None, "rows": 0, "x": "y"},
            ev.Attach("a", replay=None),
        ),
    ],
)
def test_unknown_keys_are_ignored(
    state: str, role: Role, body: dict[str, object], expected: ev.Event
) -> None:
    conn = pair_in(state).conn[role]
    conn.receive_data(packed(body))
    assert conn.next_event() == expected
    assert conn.state is not State.ERROR


def test_string_at_the_limit_is_accepted() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(packed({"type": "hello", "version": 1, "client": "e" * MAX_STR_LEN}))
    assert conn.next_event() == ev.Hello(1, "e" * MAX_STR_LEN)


def test_string_over_the_limit_is_refused() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(packed({"type": "hello", "version": 1, "client": "e" * (MAX_STR_LEN + 1)}))
    with pytest.raises(RemoteProtocolError) as excinfo:
        conn.next_event()
    assert excinfo.value.code.fatal
    assert conn.state is State.ERROR


def test_string_over_the_limit_is_bad_message_not_bad_frame() -> None:
    # docs/protocol.md: bad_frame is "a zero-length frame, a body that is not
    # msgpack, or a connection closed inside a frame"; this body is valid msgpack.
    # codec._check_str raises BAD_MESSAGE for it, but msgpack's max_str_len trips first.
    conn = Connection(Role.SERVER)
    conn.receive_data(packed({"type": "hello", "version": 1, "client": "e" * (MAX_STR_LEN + 1)}))
    error = expect_remote(conn, ErrorCode.BAD_MESSAGE)
    assert "'client'" in error.message


@pytest.mark.parametrize("char", ["é", "€", "🙂"])
def test_string_limit_counts_characters_not_bytes(char: str) -> None:
    # docs/protocol.md: "Strings are at most 4,096 characters".
    text = char * MAX_STR_LEN
    assert len(text) == MAX_STR_LEN
    conn = Connection(Role.SERVER)
    conn.receive_data(packed({"type": "hello", "version": 1, "client": text}))
    assert conn.next_event() == ev.Hello(1, text)


# --- elements per message ------------------------------------------------------------------


def elements(obj: object) -> int:
    """How many msgpack objects ``obj`` packs into: itself and all it holds, keys included."""
    if isinstance(obj, list | tuple):
        return 1 + sum(elements(item) for item in obj)
    if isinstance(obj, dict):
        return 1 + sum(elements(k) + elements(v) for k, v in obj.items())
    return 1


def nested_empty_arrays(outer: int, inner: int) -> bytes:
    """msgpack for an array of ``outer`` arrays of ``inner`` empty arrays, packed by hand."""
    inner_array = b"\xdc" + inner.to_bytes(2, "big") + b"\x90" * inner
    return b"\xdc" + outer.to_bytes(2, "big") + inner_array * outer


def audit_frame() -> bytes:
    """The audit's frame: a hello padded to 1 MiB with a million nested empty arrays."""
    hello = msgpack.packb({"type": "hello", "version": 1})
    assert hello[0] == 0x82
    body = b"\x83" + hello[1:] + msgpack.packb("pad") + nested_empty_arrays(1020, 1024)
    assert DEFAULT_MAX_FRAME_SIZE - 1024 < len(body) <= DEFAULT_MAX_FRAME_SIZE
    return frame(body)


def test_elements_of_a_hello() -> None:
    body = encode_body(ev.Hello(1, "x"))
    assert count_elements(body, 100) == elements(msgpack.unpackb(body)) == 7


def test_the_audit_frame_is_refused_before_it_is_decoded() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(audit_frame())
    tracemalloc.start()
    try:
        error = expect_remote(conn, ErrorCode.BAD_MESSAGE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"at most {MAX_ELEMENTS_FROM_CLIENT} elements" in error.message
    # Decoded, its million lists took 68 MB; refused, it costs the copy of the
    # frame and nothing more.
    assert peak < 3 * DEFAULT_MAX_FRAME_SIZE, peak


def padded(message: dict[str, object], total: int) -> bytes:
    """A frame for ``message`` plus a ``pad`` field of nils: ``total`` elements in all."""
    need = total - elements(message) - 2  # the key "pad" and its array
    if need <= 1024:
        pad: list[object] = [None] * need
    else:  # rows of at most 1,024 nils; each row is an element too
        rows = -(-need // 1025)
        nils = need - rows
        pad = [*[[None] * 1024] * (nils // 1024), [None] * (nils % 1024)]
        assert len(pad) == rows
    body = {**message, "pad": pad}
    assert elements(body) == total
    return packed(body)


@pytest.mark.parametrize(
    ("role", "message", "limit"),
    [
        (Role.SERVER, {"type": "hello", "version": 1}, MAX_ELEMENTS_FROM_CLIENT),
        (Role.CLIENT, {"type": "output", "data": b"x"}, MAX_ELEMENTS_FROM_SERVER),
    ],
)
def test_element_bound_is_exact(role: Role, message: dict[str, object], limit: int) -> None:
    state = "handshake" if role is Role.SERVER else "streaming"
    at = pair_in(state).conn[role]
    at.receive_data(padded(message, limit))
    assert isinstance(at.next_event(), ev.Hello | ev.Output)
    over = pair_in(state).conn[role]
    over.receive_data(padded(message, limit + 1))
    error = expect_remote(over, ErrorCode.BAD_MESSAGE)
    assert f"at most {limit} elements" in error.message


def test_the_bound_can_be_chosen() -> None:
    attach = ev.Attach("web/sh-1", replay=100, rows=24, cols=80, resume=5, uid="u")
    assert count_elements(encode_body(attach), 100) == 21  # the largest request
    tight = Connection(Role.SERVER, max_elements=20)
    tight.receive_data(wire(ev.Hello(1)) + wire(attach))
    assert tight.next_event() == ev.Hello(1)
    error = expect_remote(tight, ErrorCode.BAD_MESSAGE)
    assert "at most 20 elements" in error.message


def test_largest_session_list_page_round_trips() -> None:
    # Every field set, as many sessions as a page may hold: well inside the bound.
    full = dataclasses.replace(INFO, socket="/run/consoled/intake/1.sock", uid="u" * 32)
    page = ev.SessionList((full,) * MAX_LIST_LEN, more=True)
    assert count_elements(encode_body(page), MAX_ELEMENTS_FROM_SERVER) < MAX_ELEMENTS_FROM_SERVER
    pair = pair_in("idle")
    pair.send(Role.CLIENT, ev.ListSessions())
    pair.send(Role.SERVER, page)


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b"\xdd\x00\x00\x00\x02\xc0\xc3", 3),  # array 32
        (b"\xdf\x00\x00\x00\x01\xa1k\x90", 3),  # map 32
        (b"\xde\x00\x01\xa1k\xdc\x00\x01\xc2", 4),  # map 16, array 16
        (msgpack.packb([msgpack.ExtType(1, b"x" * n) for n in (1, 2, 4, 8, 16, 3, 300)]), 8),
        (msgpack.packb([b"b" * 70000, "s" * 70000, 1.5, -(2**63), 2**64 - 1]), 6),
        (msgpack.packb([1.5, -7, 200, -200, 70000, -70000, 2**33], use_single_float=True), 8),
    ],
)
def test_elements_of_every_msgpack_type(body: bytes, count: int) -> None:
    assert count_elements(body, count) == count
    with pytest.raises(RemoteProtocolError):
        count_elements(body, count - 1)


# Any value msgpack carries, nested: what the counter must agree with.
any_msgpack: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=5), children, max_size=8)
    ),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(value=any_msgpack, data=st.data())
def test_count_elements_is_what_msgpack_builds(value: Any, data: st.DataObject) -> None:
    body = msgpack.packb(value)
    exact = elements(value)
    assert count_elements(body, exact) == exact
    limit = data.draw(st.integers(min_value=1, max_value=2 * exact), label="limit")
    if limit >= exact:
        assert count_elements(body, limit) == exact
    else:
        with pytest.raises(RemoteProtocolError) as excinfo:
            count_elements(body, limit)
        assert excinfo.value.code is ErrorCode.BAD_MESSAGE


@settings(max_examples=200, deadline=None)
@given(
    pad=st.recursive(
        st.none() | ints | st.text(max_size=3),
        lambda children: (
            st.lists(children, max_size=40)
            | st.dictionaries(st.text(max_size=3), children, max_size=8)
        ),
        max_leaves=100,
    ),
    offset=st.integers(min_value=-3, max_value=3),
    cuts=cut_points,
)
def test_element_bound_decides_exactly(pad: Any, offset: int, cuts: list[int]) -> None:
    # Any shape, filled up with nils to within a few elements of the bound.
    body: dict[str, object] = {"type": "hello", "version": 1, "pad": pad}
    fill = MAX_ELEMENTS_FROM_CLIENT + offset - elements(body) - 2
    body["fill"] = [None] * max(fill, 0)
    hypothesis.event(
        "over the bound" if elements(body) > MAX_ELEMENTS_FROM_CLIENT else "within the bound"
    )
    conn = Connection(Role.SERVER)
    if elements(body) <= MAX_ELEMENTS_FROM_CLIENT:
        _feed(conn, packed(body), cuts, eof=False)
        assert conn.state is State.HELLO_SENT
        return
    with pytest.raises(RemoteProtocolError) as excinfo:
        _feed(conn, packed(body), cuts, eof=False)
    assert excinfo.value.code is ErrorCode.BAD_MESSAGE
    assert f"at most {MAX_ELEMENTS_FROM_CLIENT} elements" in excinfo.value.message


# --- hypothesis: garbage in, only RemoteProtocolError out -------------------------------

FIELD_NAMES = sorted(
    {"type", "version", "client", "data", "session", "rows", "cols", "force", "replay", "id"}
    | {"reason", "sessions", "more", "code", "message", "exec_base", "new", "follow", "pid"}
)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | ints
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.sampled_from([t.TYPE for t in ev.ALL_EVENTS] + [s.value for s in ev.SessionState]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
random_messages = st.builds(
    lambda name, fields: packed({**fields, "type": name}),
    st.sampled_from([t.TYPE for t in ev.ALL_EVENTS]),
    st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=6),
)
random_frames = st.binary(max_size=40).map(frame)
raw_bytes = st.binary(min_size=1, max_size=40)


def _bomb(name: str, widths: list[int], filler: bytes, cut: int) -> bytes:
    """A message whose ``pad`` nests arrays ``widths`` deep around ``filler`` (maybe cut short)."""
    value = filler
    for width in reversed(widths):
        value = b"\xdc" + width.to_bytes(2, "big") + value * width
    body = b"\x82" + msgpack.packb("type") + msgpack.packb(name) + msgpack.packb("pad") + value
    return frame(body[: len(body) - cut])


element_bombs = st.builds(
    _bomb,
    st.sampled_from([t.TYPE for t in ev.ALL_EVENTS]),
    st.lists(st.integers(min_value=0, max_value=64), min_size=1, max_size=3),
    st.sampled_from([b"\x90", b"\x80", b"\xc0", b"\xa2ab", b"\xd0\x80", b"\xc1"]),
    st.integers(min_value=0, max_value=3),
)


def _garbage(messages: st.SearchStrategy[ev.Event]) -> st.SearchStrategy[bytes]:
    items = st.one_of(raw_bytes, random_frames, random_messages, element_bombs, messages.map(wire))
    return st.lists(items, max_size=8).map(b"".join)


START_STATES = ["handshake", "hello_sent", "idle", "awaiting", "streaming", "done"]


def _feed(conn: Connection, data: bytes, cuts: Sequence[int], eof: bool) -> None:
    for piece in split(data, cuts):
        conn.receive_data(piece)
        got, sentinel = drain(conn)
        assert sentinel is NEED_DATA
        assert all(isinstance(e, ev.Event) for e in got)
    if eof:
        conn.receive_data(b"")
        _, sentinel = drain(conn)
        assert sentinel is CLOSED
        assert conn.buffered == 0


def _feed_garbage(conn: Connection, data: bytes, cuts: Sequence[int], eof: bool) -> None:
    """Feed; every outcome must be an event, a sentinel or RemoteProtocolError."""
    error: RemoteProtocolError | None = None
    try:
        _feed(conn, data, cuts, eof)
    except RemoteProtocolError as exc:
        error = exc
    if error is None:
        assert conn.state is not State.ERROR
        return
    assert error.code.fatal, error.code
    assert state_of(conn) is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    if conn.our_role is Role.SERVER:
        # The daemon answers with the error's code and closes.
        conn.send(ev.Error(error.code, error.message))
        assert state_of(conn) is State.DONE


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(START_STATES),
    data=_garbage(any_client_message),
    cuts=cut_points,
    eof=st.booleans(),
)
def test_server_survives_any_bytes(state: str, data: bytes, cuts: list[int], eof: bool) -> None:
    _feed_garbage(pair_in(state).server, data, cuts, eof)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=cut_points, eof=st.booleans())
def test_fresh_server_survives_pure_noise(data: bytes, cuts: list[int], eof: bool) -> None:
    _feed_garbage(Connection(Role.SERVER), data, cuts, eof)


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(START_STATES),
    data=_garbage(any_server_message),
    cuts=cut_points,
    eof=st.booleans(),
)
def test_client_survives_any_bytes(state: str, data: bytes, cuts: list[int], eof: bool) -> None:
    _feed_garbage(pair_in(state).client, data, cuts, eof)


# --- hypothesis: every valid message round-trips ---------------------------------------


@settings(max_examples=200, deadline=None)
@given(hello=hellos, welcome=welcomes, cuts=cut_points)
def test_handshake_round_trips(hello: ev.Hello, welcome: ev.Welcome, cuts: list[int]) -> None:
    pair = ConnectionPair()
    pair.send(Role.CLIENT, hello, cuts=cuts)
    pair.send(Role.SERVER, welcome, cuts=cuts)
    assert pair.states() == (State.IDLE, State.IDLE)


@settings(max_examples=200, deadline=None)
@given(request_=any_request, cuts=cut_points, data=st.data())
def test_request_and_reply_round_trip_any(
    request_: ev.Event, cuts: list[int], data: st.DataObject
) -> None:
    pair = pair_in("idle")
    pair.send(Role.CLIENT, request_, cuts=cuts)
    reply_type = REPLY_FOR_REQUEST[type(request_)]
    reply = data.draw(st.one_of(REPLIES[reply_type], errors), label="reply")
    pair.send(Role.SERVER, reply, cuts=cuts)
    if isinstance(reply, ev.Error):
        expected = State.DONE if reply.code.fatal else State.IDLE
    elif isinstance(reply, ev.Attached):
        expected = State.STREAMING
    elif isinstance(reply, ev.SessionList) and reply.more:
        expected = State.AWAITING
    else:
        expected = State.IDLE
    assert pair.states() == (expected, expected)


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.just(Role.CLIENT), st.one_of(*STREAM_INPUTS.values()))
        | st.tuples(st.just(Role.SERVER), outputs | non_fatal_errors),
        max_size=10,
    ),
    last=endeds | st.builds(ev.Error, code=st.sampled_from(FATAL_CODES), message=texts),
    cuts=cut_points,
)
def test_stream_round_trips(
    script: list[tuple[Role, ev.Event]], last: ev.Event, cuts: list[int]
) -> None:
    pair = pair_in("streaming")
    for role, event in script:
        pair.send(role, event, cuts=cuts)
        assert pair.states() == (State.STREAMING, State.STREAMING)
    pair.send(Role.SERVER, last, cuts=cuts)
    assert pair.states() == (State.DONE, State.DONE)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(st.one_of(*STREAM_INPUTS.values()), min_size=1, max_size=20), cuts=cut_points
)
def test_many_messages_in_one_stream_of_bytes(events: list[ev.Event], cuts: list[int]) -> None:
    pair = pair_in("streaming")
    pair.send(Role.CLIENT, *events, cuts=cuts)


# --- the message classes --------------------------------------------------------------


def test_messages_behave_as_frozen_dataclasses() -> None:
    ended = ev.Ended(ev.EndReason.EXITED, "bye", exit_code=3)
    assert ended == ev.Ended(reason=ev.EndReason.EXITED, message="bye", exit_code=3)
    assert ended != ev.Ended(ev.EndReason.EXITED, "bye")
    assert ev.Detach() == ev.Detach()
    assert ev.Output(b"x") != ev.Input(b"x"), "another message is never equal"
    assert hash(ended) == hash(ev.Ended(ev.EndReason.EXITED, "bye", exit_code=3))
    assert len({ev.Output(b"a"), ev.Output(b"a"), ev.Output(b"b")}) == 2
    assert repr(ev.Hello(1)) == "Hello(version=1, client='')"
    assert ev.Attach("web").replay is None, "defaults"
    with pytest.raises(AttributeError):
        ended.message = "changed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ended.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        ev.Hello()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ev.Hello(1, "c", "too many")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ev.Hello(1, nope=2)  # type: ignore[call-arg]
    assert not hasattr(ended, "__dict__"), "slotted"
    assert ev.Resize.__match_args__ == ("session", "rows", "cols")
    match ev.Resize("web", 24, 80):
        case ev.Resize(name, rows, cols):
            assert (name, rows, cols) == ("web", 24, 80)
    # What the standard library offers for dataclasses works as well.
    assert dataclasses.is_dataclass(ended)
    assert dataclasses.replace(ended, exit_code=0) == ev.Ended(
        ev.EndReason.EXITED, "bye", None, None, 0
    )
    assert [f.name for f in dataclasses.fields(ev.Hello)] == ["version", "client"]
    assert dataclasses.asdict(ev.Hello(1, "c")) == {"version": 1, "client": "c"}
    assert copy.deepcopy(INFO) == INFO
    assert pickle.loads(pickle.dumps(ended)) == ended
    # consoled.frozen.replace, which does not import dataclasses.
    assert replace(ended, exit_code=0) == dataclasses.replace(ended, exit_code=0)
    assert replace(ended) == ended
    assert replace(ended) is not ended
    with pytest.raises(TypeError, match="Ended has no field nope, other"):
        replace(ended, other=1, nope=2)


@pytest.mark.parametrize("cls", [*ev.ALL_EVENTS, ev.SessionInfo])
def test_every_message_field_has_a_wire_checker(cls: type[Frozen]) -> None:
    # The schema is worked out on first use: every field must have a checker.
    assert [f.name for f in _fields_of(cls)] == list(cls._fields)
