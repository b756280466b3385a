"""The trainer service: runs tabular RL agents on Taxi in worker processes."""
