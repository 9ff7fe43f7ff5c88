"""The method: Barlow Twins and its HSIC variant, in PyTorch alone.

config (PretrainConfig), data, augment, models, losses, optim, train (pretraining and checkpoints),
evaluate (the fast probe, the kNN monitor, linear evaluation). Nothing here imports Ray, Optuna or
MLflow, so this package runs on a bare GPU machine (benchmarks/gpu_check.sh relies on it).
"""
