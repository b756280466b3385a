"""`python -m web`: the HTTP face, configured from the environment."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import uvicorn

from taxidriver.logs import setup_logging
from web.app import create_app
from web.settings import WebSettings


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit status -15); like the
    other services, a requested stop met in full exits 0 here."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    settings = WebSettings.from_env()
    setup_logging("web", settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
