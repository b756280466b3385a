"""The tuner: hyper-parameter sweeps over training runs (Optuna ask/tell, registry as the store)."""
