"""A real `mlflow server` on 127.0.0.1 that fault-injection tests can SIGKILL and start again on the same port
and store (it takes ~20 s to start on a busy 2-core machine)."""

import os
import subprocess
import sys
from pathlib import Path

from sslsearch.processes import free_port, start_server, stop_server, wait_until_answers


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
            self.process = start_server(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                 f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"], stdout=log, env=env)
        return self

    def wait(self, timeout_s: float = 180) -> str:
        """The URI, once /health answers."""
        failed = wait_until_answers(self.process, f"{self.uri}/health", timeout_s, poll_s=0.5)
        if failed is not None:
            raise RuntimeError(f"mlflow server {failed}: {self.log.read_text()[-2000:]}")
        return self.uri

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group): the fault, not a clean shutdown."""
        if self.process is not None:
            stop_server(self.process, kill=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process, grace_s=20)
