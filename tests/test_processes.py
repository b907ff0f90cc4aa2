"""A killed tool leaves no pool worker writing behind it."""
import signal
import subprocess
import sys
import time

import psutil
import pytest
from PIL import Image

SCRIPT = """
import sys
from pathlib import Path
from addressvlm.data.graft import GraftPair, graft_batch
root = Path(sys.argv[1])
pairs = [GraftPair(root / f"sat{i % 12}.png", root / "view.jpg", f"out/{i}.jpg") for i in range(600)]
graft_batch(pairs, root / "grafted", workers=2, progress=False)
"""


def count(folder):
    return sum(1 for _ in folder.rglob("*.jpg")) if folder.exists() else 0


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killing_graft_stops_its_workers(tmp_path, how):
    for i in range(12):  # pairs are chunked by satellite crop: several crops, several chunks, a pool
        Image.effect_noise((336, 336), 60).convert("RGB").save(tmp_path / f"sat{i}.png")
    Image.effect_noise((1600, 1200), 60).convert("RGB").save(tmp_path / "view.jpg", quality=95)
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)])
    out = tmp_path / "grafted"
    deadline = time.time() + 120
    while count(out) < 5 and parent.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(parent.pid).children(recursive=True)
    assert workers and count(out) < 600, "the run must still be going when it is killed"
    parent.send_signal(how)
    parent.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers still running after the parent died: {[p.pid for p in alive]}"
    written = count(out)
    time.sleep(1.0)
    assert count(out) == written  # nothing written after the kill
    from addressvlm.data.graft import graft_batch

    graft_batch([], out, progress=False)  # the next run starts by removing what a killed one half wrote
    assert not list(out.rglob("*.tmp"))


def test_a_child_forked_inside_the_block_exits_on_sigterm_instead_of_running_on():
    """A SIGTERM that reaches a freshly forked worker before its initializer resets the handler ends that worker; it
    must not raise in the child, where the exception would climb the parent's copied stack (seen: a pool worker went
    on running the rest of the test session while the parent waited for it)."""
    import os

    from addressvlm.core.processes import terminating_on_sigterm

    with terminating_on_sigterm():
        child = os.fork()
        if child == 0:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException:
                os._exit(7)  # the handler raised in the child: the bug
            os._exit(0)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
