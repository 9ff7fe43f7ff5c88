"""Shared fixtures. Ray starts once per test session, with explicit CPUs (no local_mode); under pytest-xdist
(`-n 2`, the README's commands) once per worker, each its own local cluster (tests mark their processes by a private
temp folder, so two clusters on one machine never touch each other's)."""

import os

import pytest

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# MLflow's telemetry thread would otherwise run in every test process (tests send nothing out): mlflow, imported while
# pytest collects, looks for PYTEST_CURRENT_TEST only then, before it is set.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance with 2 CPUs for the whole session; sweeps reuse it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_configure(config):
    # A suite started as a background job of a non-interactive shell (`... &`, as CI scripts and nohup do) inherits
    # SIGINT ignored, and every process a test starts would inherit that too: a test that stops a command "as Ctrl-C
    # does" would then watch it run on. Python's own handler here is reset to the default in each child it execs.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # One thread per test process: on 2 shared cores, two OpenMP threads fight whatever else runs
    # (Ray workers, a second pytest) and slow small CPU models down several-fold.
    import torch

    torch.set_num_threads(1)
