"""The worker pool: results in order whatever the worker count, and Ctrl-C handled by the main process only."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dataprep.runs.pool import OrderedExecutor


def _square(x: int) -> int:
    return x * x


def _nothing() -> None:
    return None


def test_results_come_back_in_order_for_any_worker_count():
    for workers in (1, 2, 3):
        with OrderedExecutor(workers, _nothing, ()) as executor:
            got = list(executor.map(_square, range(50)))
        assert got == [(i, i * i) for i in range(50)]


SCRIPT = textwrap.dedent("""
    import sys, time
    from dataprep.runs.pool import OrderedExecutor

    def idle():
        pass

    if __name__ == "__main__":
        with OrderedExecutor(2, idle, ()) as executor:
            executor.call(time.sleep, 0)  # the workers are up
            print("ready", flush=True)
            try:
                time.sleep(60)  # the workers wait for tasks, as while the main process writes
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)
""")


@pytest.mark.slow
def test_ctrl_c_reaches_only_the_main_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert stderr.strip().splitlines() == ["interrupted"], stderr
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
