"""The publisher's own connection to Redis (pipeline/publish.py): one pipeline of script calls
in flight, sent and read in two steps, so the writer thread encodes the next results while Redis
runs the last ones (redis-py's ``pipeline.execute()`` sends and then blocks on the replies).

Scripts are loaded on every new connection; a call refused with NOSCRIPT (someone flushed the
scripts) did not run: its reply says so, the publisher retries it and the scripts are loaded
again first.

A result's script arguments are packed into RESP on the writer thread as it is encoded
(`resp_args`), ahead of the batch they go in; a call is its header and those packed runs
(`Packed`). hiredis' ``pack_command`` took ~4 µs an entry for what is a few byte copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script


@dataclass(frozen=True, slots=True)
class Packed:
    """A command already in RESP (``data``); ``name`` picks the reply's parser."""

    name: str
    data: bytes


Command = tuple[Any, ...] | Packed


def resp_args(args: Iterable[Any]) -> bytes:
    """Arguments as RESP bulk strings, as redis-py writes them: bytes as they are, text as
    UTF-8, integers and floats as their ``repr``; anything else is a `redis.DataError`."""
    out = []
    for arg in args:
        if isinstance(arg, bytes):
            pass
        elif isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = repr(arg).encode()
        else:
            raise redis.DataError(f"invalid input of type {type(arg).__name__!r}: convert to bytes, str, int or float first")
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def resp_frame_run(entry_id: str, seq: int, json: bytes, top_track: int) -> tuple[bytes, bytes, bytes]:
    """`resp_args` of the common run, a frame without events or counters (``entry_id, seq, json,
    top_track, 0, 0``), in two formatting steps (~0.6 µs against ~2 µs) and in three parts, the
    JSON itself the middle one: it is copied once, into the batch's command (`packed_call`)."""
    eid, s, t = entry_id.encode(), b"%d" % seq, b"%d" % top_track
    return (b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n" % (len(eid), eid, len(s), s, len(json)), json,
            b"\r\n$%d\r\n%b\r\n$1\r\n0\r\n$1\r\n0\r\n" % (len(t), t))


def packed_call(head: Sequence[Any], runs: Sequence[Sequence[bytes]], run_args: int) -> Packed:
    """A command whose first arguments are ``head`` and the rest ``runs`` (`resp_args` output in
    parts, ``run_args`` arguments in all), joined in one copy."""
    start = (b"*%d\r\n" % (len(head) + run_args), resp_args(head))
    return Packed(str(head[0]), b"".join(itertools.chain(start, itertools.chain.from_iterable(runs))))


class Wire:
    def __init__(self, client: redis.Redis, scripts: Sequence[Script]):
        self.client = client
        self.scripts = list(scripts)
        self._conn: Any = None
        self._sent: list[str] | None = None  # the names of the commands sent
        self._load = True  # load the scripts before the next send

    def send(self, commands: list[Command]) -> None:
        """Write these commands (replies are read by `receive`); a connection error drops the
        connection and raises."""
        try:
            if self._conn is None:
                self._conn = self.client.connection_pool.get_connection()
            if self._load:
                for script in self.scripts:
                    self.client.script_load(script.script)
                self._load = False
            conn = self._conn
            chunks = [c.data if isinstance(c, Packed) else b"".join(conn.pack_command(*c)) for c in commands]
            conn.send_packed_command(chunks if len(chunks) == 1 else [b"".join(chunks)])  # one write, no extra copy
        except BaseException:
            self.drop()
            raise
        self._sent = [c.name if isinstance(c, Packed) else c[0] for c in commands]

    def receive(self) -> list[Any]:
        """The replies to what `send` wrote, in order; a command's error is its reply (as
        ``execute(raise_on_error=False)``); a connection error drops the connection and raises."""
        names, self._sent = self._sent or [], None
        out: list[Any] = []
        try:
            for name in names:
                try:
                    out.append(self.client.parse_response(self._conn, name))
                except redis.exceptions.NoScriptError as exc:
                    self._load = True
                    out.append(exc)
                except redis.ResponseError as exc:
                    out.append(exc)
        except BaseException:
            self.drop()
            raise
        return out

    def drop(self) -> None:
        """Forget the connection (after an error or on close): the next send opens a new one."""
        conn, self._conn, self._sent = self._conn, None, None
        self._load = True
        if conn is not None:
            conn.disconnect()
            self.client.connection_pool.release(conn)


def evalsha(script: Script, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def writable(text: str) -> str:
    """``text`` as UTF-8 can write it: one it cannot (a file name decoded with surrogateescape in
    a camera's error) escaped — it raised at packing, and the writer took that for an outage of
    every camera."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
