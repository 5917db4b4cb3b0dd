"""A real Milvus standalone server for tests: the C++ binary that PyPI's `milvus` package ships.

`MilvusTestServer(data_dir).start()` runs it on 127.0.0.1 with its gRPC proxy on a free port and
everything it writes (etcd, segments, rocksmq, logs, config) under `data_dir`; `stop()` ends it;
`start()` again brings it back on the same port and data (a server restart). Authentication is
on, with Milvus's default `root:Milvus` account, so a wrong token can be tested too.

The `milvus` package (2.3.5, the newest with a Linux wheel) is a launcher: it unpacks the binary
and its libraries into `data_dir/bin` on first start. Only its server is used; the project's
client is the current pymilvus (see core/vectorstore/milvus_store.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

TOKEN = "root:Milvus"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_class():
    from milvus import MilvusServerConfig

    class ReusableConfig(MilvusServerConfig):
        """The launcher checks each port by binding it; with SO_REUSEADDR, so a port the server
        just released (its connections in TIME_WAIT) can be taken again on a restart."""

        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except (OSError, ValueError, OverflowError):
                sock.close()
                return None

    return ReusableConfig


class MilvusTestServer:
    """One Milvus standalone process with its data in a directory of the test's own."""

    def __init__(self, data_dir: Path, *, port: int | None = None, auth: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.auth = auth
        self._server = None
        self._ports: dict[str, int] = {}
        self.start_seconds: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self, timeout_s: float = 120.0) -> None:
        from milvus import MilvusServer

        config = _config_class()()
        config.set("authorization_enabled", self.auth)
        server = MilvusServer(config, wait_for_started=False, data_dir=str(self.data_dir))
        # a restart binds every port of the first start again (etcd, coordinators, proxy)
        server.config.update(**{**self._ports, "proxy_port": self.port})
        began = time.monotonic()
        server.start()
        self._server = server
        self._ports = {
            key: int(value[1])
            for key, value in server.config.configurable_items.items()
            if key.endswith("_port")
        }
        try:
            server.wait_started(timeout=int(timeout_s * 1000))
        except BaseException:
            self.stop()
            raise
        self.start_seconds.append(time.monotonic() - began)

    def stop(self, grace_s: float = 3.0) -> None:
        """End the server: SIGTERM, then SIGKILL after `grace_s` (Milvus 2.3 standalone took more
        than 20 s to exit on SIGTERM here; its write-ahead log keeps acknowledged writes)."""
        server, self._server = self._server, None
        if server is None:
            return
        proc = server.server_proc
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except Exception:
                proc.kill()
                proc.wait(timeout=30)
        server.stop()

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.server_proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's own log, for a failure message."""
        out = []
        for name in ("milvus-stdout.log", "milvus-stderr.log"):
            path = self.log_dir / name
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


def serving(folder: Path) -> Iterator[MilvusTestServer]:
    """A started server for a module's fixture (the test fails, with the server's log, when it
    does not start), stopped afterwards."""
    import pytest

    server = MilvusTestServer(folder)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"the Milvus test server did not start: {exc}\n{server.log_tail()}")
    yield server
    server.stop()
