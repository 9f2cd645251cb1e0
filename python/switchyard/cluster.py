"""A local Switchyard cluster (coordinator + workers) for examples and tests:

    with LocalCluster(cli="build/switchyard", config="configs/local.yaml") as cluster:
        layer = MoELayer(cfg, cluster=cluster.endpoint)

runs `switchyard up --config C`, waits for "cluster ready", and stops it with SIGINT (the
coordinator tells every worker to exit) on leaving."""
import os
import signal
import subprocess
import tempfile
import time


class LocalCluster:
    def __init__(self, cli="build/switchyard", config="configs/local.yaml", timeout_s=120):
        self.cli, self.config, self.timeout_s = cli, config, timeout_s
        self.endpoint = None
        self.proc = None

    def __enter__(self):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="switchyard-up-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([self.cli, "up", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            text = self.output()
            for line in text.splitlines():
                if line.startswith("coordinator listening on "):
                    self.endpoint = line.split()[3]
            if "cluster ready" in text and self.endpoint:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchyard up exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"switchyard up not ready within {self.timeout_s} s")

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.unlink(self.log.name)
        return False
