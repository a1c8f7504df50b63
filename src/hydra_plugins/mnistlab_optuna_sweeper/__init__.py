"""mnistlab's Optuna sweeper for Hydra: `-m hparams_search=optuna` (hydra/sweeper=mnistlab_optuna).

Persistent studies (SQLite beside the MLflow store, or any RDB URL), per-epoch pruning from the
trials' own processes, and the search's results on the MLflow parent run. The search-space
grammar of hydra-optuna-sweeper 1.3 (MIT, facebookresearch/hydra) is kept.
"""
