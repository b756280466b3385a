"""`python -m trainer_service`: the trainer with JSON logs and a graceful SIGTERM drain.

On SIGTERM, running runs checkpoint and are marked INTERRUPTED before the server stops
(TrainerApp.stop).
"""

from __future__ import annotations

from taxidriver.server import main
from trainer_service.app import start_trainer
from trainer_service.settings import TrainerSettings

if __name__ == "__main__":
    main("trainer", TrainerSettings, start_trainer)
