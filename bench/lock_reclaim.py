"""How long the next retrain waits for the slot of a SIGKILLed holder (numbers, not a test).

Starts `prefect server start` on a free loopback port (or uses $PREFECT_API_URL with --use-env),
then ``--repeats`` times: a holder process takes the retrain lock of a model, is SIGKILLed, and
this process times `tasks.locks.retrain_lock` until it holds the slot. Also times a normal
acquire/release of a free lock. The machine may be shared: the load average is printed.

    .venv/bin/python bench/lock_reclaim.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOLDER = """
import sys, time
from pathlib import Path
from tasks.locks import retrain_lock
with retrain_lock(sys.argv[1], 60):
    Path(sys.argv[2]).write_text("held")
    time.sleep(3600)
"""


def _holder(model: str, tmp: Path, url: str) -> subprocess.Popen:
    ready = tmp / f"{model}.ready"
    env = {**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, model, str(ready)], env=env)
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit("holder failed to take the lock")
        time.sleep(0.05)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--use-env", action="store_true", help="use $PREFECT_API_URL")
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.locks import retrain_lock
    from tests.helpers import free_port, start_prefect_server, stop_group

    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="aevb-bench-lock-") as tmp_name:
        tmp, server = Path(tmp_name), None
        if args.use_env:
            url = os.environ["PREFECT_API_URL"]
        else:
            port = free_port()
            url = f"http://127.0.0.1:{port}/api"
            server = start_prefect_server(str(tmp / "home"), port, str(tmp / "server.log"))
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                free, reclaim = [], []
                for i in range(args.repeats):
                    start = time.monotonic()
                    with retrain_lock(f"bench-free-{i}", 60):
                        pass
                    free.append(time.monotonic() - start)
                    proc = _holder(f"bench-killed-{i}", tmp, url)
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    start = time.monotonic()
                    with retrain_lock(f"bench-killed-{i}", 60):
                        reclaim.append(time.monotonic() - start)
        finally:
            if server is not None:
                stop_group(server)
    for label, values in (("free lock, acquire+release", free), ("killed holder", reclaim)):
        print(
            f"{label}: median {statistics.median(values):.2f} s, "
            f"max {max(values):.2f} s over {len(values)}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
