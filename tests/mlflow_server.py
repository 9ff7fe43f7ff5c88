"""A real `mlflow server` on 127.0.0.1 that fault-injection tests can SIGKILL and start again on the same port
and store (it takes ~20 s to start on a busy 2-core machine)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from local_processes import free_port


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> "MlflowServer":
        # No job runner: it would add seven worker processes that these tests do not need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                 f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self

    def wait(self, timeout_s: float = 180) -> str:
        """The URI, once /health answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return self.uri
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group): the fault, not a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
