"""`python -m web`: the HTTP face, configured from the environment."""

from __future__ import annotations

import uvicorn

from taxidriver.logs import setup_logging
from web.app import create_app
from web.settings import WebSettings


def main() -> None:
    settings = WebSettings.from_env()
    setup_logging("web", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
