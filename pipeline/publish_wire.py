"""The publisher's own connection to Redis (pipeline/publish.py): one pipeline of script calls
in flight, sent and read in two steps, so the writer thread encodes the next results while Redis
runs the last ones (redis-py's ``pipeline.execute()`` sends and then blocks on the replies).

Scripts are loaded on every new connection; a call refused with NOSCRIPT (someone flushed the
scripts) did not run: its reply says so, the publisher retries it and the scripts are loaded
again first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script


class Wire:
    def __init__(self, client: redis.Redis, scripts: Sequence[Script]):
        self.client = client
        self.scripts = list(scripts)
        self._conn: Any = None
        self._sent: list[tuple[Any, ...]] | None = None
        self._load = True  # load the scripts before the next send

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Write these commands (replies are read by `receive`); a connection error drops the
        connection and raises."""
        try:
            if self._conn is None:
                self._conn = self.client.connection_pool.get_connection()
            if self._load:
                for script in self.scripts:
                    self.client.script_load(script.script)
                self._load = False
            self._conn.send_packed_command(self._conn.pack_commands(commands))
        except BaseException:
            self.drop()
            raise
        self._sent = commands

    def receive(self) -> list[Any]:
        """The replies to what `send` wrote, in order; a command's error is its reply (as
        ``execute(raise_on_error=False)``); a connection error drops the connection and raises."""
        commands, self._sent = self._sent or [], None
        out: list[Any] = []
        try:
            for args in commands:
                try:
                    out.append(self.client.parse_response(self._conn, args[0]))
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
