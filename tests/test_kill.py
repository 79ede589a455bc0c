"""``kill -9`` at the worst moments (issue 14): the generator's worker processes die with their
parent and the next run cleans up; a training killed while it writes checkpoints leaves no
temporary files behind after the next run and resumes to exactly the uninterrupted result."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import TINY, _toy_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")


def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _popen(argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # SIGINT back to its default in the child: a test run started in the background of a
    # non-interactive shell inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler (the Ctrl-C test would see the signal vanish)
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_generator_workers_die_with_a_killed_parent_and_the_next_run_cleans_up(tmp_path):
    argv = ["synth", "generate", "scenario2", "-n", "400", "--seed", "0", "--workers", "2",
            "-o", "d.h5", "-q"]
    p = _popen(argv, tmp_path)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = _children(p.pid)
    assert len(workers) >= 2, "the workers never started"
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "orphaned workers kept running"
    leftovers = [f.name for f in tmp_path.iterdir()]
    assert "d.h5" not in leftovers  # never a half-written file under the final name
    r = subprocess.run([sys.executable, "-m", *argv[:4], "3", *argv[5:]], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d.h5"]  # temp file and lock gone


def test_training_killed_during_checkpoint_writes_resumes_to_the_same_model(tmp_path):
    from vnumba.io.models import load_model

    data = _toy_dataset(tmp_path / "D.h5")
    base = ["vnumba.train", str(data), *TINY, "--iters", "200", "--batch", "2", "--crop", "12",
            "--checkpoint-every", "1", "--quiet"]
    r = subprocess.run([sys.executable, "-m", *base, "--out", str(tmp_path / "ref.h5")],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "k.h5"
    rng = np.random.default_rng(0)
    kills = 0
    ckpt = tmp_path / "k.ckpt.h5"
    for _ in range(4):
        stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        p = _popen(base + ["--out", str(out), "--resume"], tmp_path)
        # wait until this run writes checkpoints (one after every iteration), then kill it at
        # a random moment, most likely inside a write
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None and (
                not ckpt.exists() or ckpt.stat().st_mtime_ns == stamp):
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 3, kills  # most runs were killed mid-way
    r = subprocess.run([sys.executable, "-m", *base, "--out", str(out), "--resume"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = load_model(tmp_path / "ref.h5").params, load_model(out).params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp") or
                f.name.endswith(".lock")]


@pytest.mark.parametrize("cmd", ["vnumba.predict", "vnumba.evaluate"])
def test_ctrl_c_prints_one_line_and_leaves_nothing_half_written(tmp_path, cmd):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    (tmp_path / "d").mkdir()
    for name in ("a", "b"):
        iio.imwrite(tmp_path / "d" / f"{name}.png",
                    (rng.uniform(.3, .9, (1024, 1024, 3)) * 255).astype(np.uint8))
        np.savez(tmp_path / "d" / f"{name}_labels.npz", instances=np.zeros((1024, 1024), np.int32),
                 classes=np.zeros((1024, 1024), np.int32))
    argv = ([cmd, "d/a.png", "d/b.png", "--mpp", "0.25", "--out", "o"] if cmd == "vnumba.predict"
            else [cmd, "d", "--mpp", "0.25", "--out", "o", "--no-overlays"])
    p = _popen(argv, tmp_path)
    # Interrupt during the second image: the first one compiled the kernels (a signal that
    # lands inside Numba's compiler can be lost there) and its outputs are complete.
    err, deadline = [], time.time() + 600
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        err.append(line)
        if line.startswith("[2/2]"):
            break
    assert p.poll() is None, "".join(err)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=300)[1], None
    err = "".join(err) + rest
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("warning:", "[", " "))]
    assert p.returncode == 130 and "Traceback" not in err, err
    assert lines and lines[-1].startswith("interrupted"), err
    left = [f.name for f in (tmp_path / "o").rglob("*")] if (tmp_path / "o").exists() else []
    assert not [n for n in left if n.endswith(".tmp")], left
    if cmd == "vnumba.predict":  # the first image's outputs were written whole
        assert {"a_mask.png", "a_objects.geojson"} <= set(left), left
