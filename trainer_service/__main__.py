"""`python -m trainer_service`: the trainer with JSON logs and a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio

from taxidriver.logs import setup_logging
from taxidriver.server import serve
from trainer_service.app import start_trainer
from trainer_service.settings import TrainerSettings


async def main() -> None:
    settings = TrainerSettings.from_env()
    setup_logging("trainer", settings.log_level)
    app = await start_trainer(settings)
    # On SIGTERM: running runs checkpoint and are marked INTERRUPTED before the server stops.
    await serve(app.running, grace=settings.grace, on_shutdown=lambda: app.runs.shutdown(settings.grace))
    await app.client.close()


if __name__ == "__main__":
    asyncio.run(main())
