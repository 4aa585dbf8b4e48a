"""A loopback TCP proxy in front of PostgreSQL that records every simple query a client sends:
one round trip each (psycopg2 sends every statement as a simple query). The unit tests count a
transition's round trips with it (``tests/unit/catalog/test_pipeline.py``); a deployment test
points the catalog connection of every Airflow component at it, to see which statements the
task processes really sent (``tests/deployment/test_first_start_deployment.py``)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class QueryRecorder:
    """A loopback proxy that records the text of every simple query ('Q') a client sends."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.queries: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._read_client, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _read_client(self, src: socket.socket, dst: socket.socket) -> None:
        buf, startup = b"", True
        with suppress(OSError):
            while data := src.recv(65536):
                buf += data
                while True:
                    if startup:  # untyped packets: SSL/GSS requests, then the startup packet
                        if len(buf) < 8 or len(buf) < int.from_bytes(buf[:4], "big"):
                            break
                        n, code = int.from_bytes(buf[:4], "big"), int.from_bytes(buf[4:8], "big")
                        buf, startup = buf[n:], code >> 16 != 3
                        continue
                    if len(buf) < 5 or len(buf) < 1 + int.from_bytes(buf[1:5], "big"):
                        break
                    n = int.from_bytes(buf[1:5], "big")
                    kind, body, buf = buf[:1], buf[5 : 1 + n], buf[1 + n :]
                    if kind == b"Q":
                        self.queries.append(body.rstrip(b"\0").decode("utf-8", "replace"))
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
