"""`python -m web`: the HTTP face, configured from the environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from taxidriver.config import StartupError
from taxidriver.server import main, mark_listening
from web.app import create_app
from web.settings import WebSettings

log = logging.getLogger("web")

# How often start-up looks whether uvicorn has started (it exposes a flag, not an event).
STARTED_POLL_S = 0.02


class _Server(uvicorn.Server):
    """Signals belong to taxidriver.server.main, which calls WebApp.stop like every service's
    stop; uvicorn's own handlers would also re-raise SIGTERM after the drain (exit -15)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class WebApp:
    server: _Server
    serving: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (at most 10 s), close the gateway channel."""
        self.server.should_exit = True
        await self.serving


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is a start-up error like the others'."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    mark_listening()
    return sock


def _check_ca_file(path: str) -> None:
    """Read here, not first in uvicorn's lifespan, where a missing file was a traceback and exit 3."""
    if not path:
        return
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read WEB_GATEWAY_CA_FILE {path}: {exc.strerror or exc}") from exc


async def start_web(settings: WebSettings) -> WebApp:
    _check_ca_file(settings.gateway_ca_file)
    sock = _listen(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings), log_config=None, access_log=False, timeout_graceful_shutdown=10, lifespan="on"
    )
    server = _Server(config)
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="web")
    while not server.started:
        if serving.done():
            # uvicorn ends a failed lifespan start-up with SystemExit(3): one line and exit 2 here.
            with contextlib.suppress(SystemExit):
                serving.result()
            raise StartupError("the web app did not start (see the log above)")
        await asyncio.sleep(STARTED_POLL_S)
    port = int(sock.getsockname()[1])
    log.info("web on http://%s:%d", settings.host, port)
    return WebApp(server=server, serving=serving, port=port)


if __name__ == "__main__":
    main("web", WebSettings, start_web)
