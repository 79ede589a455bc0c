"""The one seam through which work runs (vnumba.executor) and dataset generation on Dask
(issue 23, first part): a ``LocalCluster`` of 2 worker processes started by the tests."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vnumba.executor import Executor, SchedulerError, get_executor, parse_scheduler

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

pytest.importorskip("distributed")


@pytest.mark.parametrize("spec,expect", [
    (None, ("inprocess", None)), ("", ("inprocess", None)), ("local:2", ("local", 2)),
    ("processes:3", ("processes", 3)), ("tcp://10.0.0.5:8786", ("address", "tcp://10.0.0.5:8786")),
])
def test_scheduler_specs_are_parsed(spec, expect):
    assert parse_scheduler(spec) == expect


@pytest.mark.parametrize("spec", ["local:0", "local:x", "local:", "8786", "tcp://", "dask"])
def test_bad_scheduler_specs_are_refused_naming_them(spec):
    with pytest.raises(SchedulerError, match="--scheduler"):
        parse_scheduler(spec)


def _square_plus(shared, i):
    return i * i + shared


def test_in_process_and_pool_executors_keep_the_items_order():
    with get_executor(None) as ex:
        assert type(ex) is Executor
        assert list(ex.map(_square_plus, range(5), shared=1)) == [1, 2, 5, 10, 17]
    with get_executor("processes:2") as ex:
        assert list(ex.map(_square_plus, range(9), shared=0)) == [i * i for i in range(9)]


@pytest.fixture(scope="module")
def cluster():
    with get_executor("local:2") as ex:
        yield ex


def test_local_cluster_runs_two_single_threaded_workers_in_order(cluster):
    assert cluster.workers == 2
    assert list(cluster.map(_square_plus, range(20), shared=3)) == [i * i + 3 for i in range(20)]

    def threads(shared, i):
        import os
        return os.environ.get("NUMBA_NUM_THREADS"), os.getpid()
    got = list(cluster.map(threads, range(8)))
    assert {g[0] for g in got} == {os.environ.get("NUMBA_NUM_THREADS", "1")}


@pytest.mark.parametrize("chunk", [2, 3, 50])
def test_items_in_chunks_come_back_in_order_whatever_the_chunk(cluster, chunk):
    assert list(cluster.map(_square_plus, range(11), shared=1, chunk=chunk)) == \
        [i * i + 1 for i in range(11)]
    assert list(cluster.map(_square_plus, [], shared=1, chunk=chunk)) == []


def test_dask_workers_keep_freed_memory_instead_of_dasks_trimming(cluster):
    def memory(shared, i):
        import os

        from vnumba.ops import memory as M
        return M._state["applied"], os.environ.get("MALLOC_TRIM_THRESHOLD_")
    got = set(cluster.map(memory, range(4)))
    if sys.platform.startswith("linux"):
        assert got == {(True, None)}      # Dask's 65536 dropped, glibc told to keep 1 GiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("trim, keep, expect", [("65536", "1", "True"), ("131072", "1", "False"),
                                                ("65536", "0", "False")])
def test_worker_setup_overrides_only_dasks_default_trim(trim, keep, expect):
    code = "from vnumba.executor import setup_worker; print(setup_worker())"
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_=trim, VNUMBA_KEEP_MEMORY=keep)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expect       # a user's own threshold, or opting out, is kept


def test_a_task_whose_worker_dies_is_rerun_and_nothing_is_lost(cluster, tmp_path):
    """Task 3 kills its worker process the first time it runs (a lost worker): Dask reruns it
    on a worker that lives, and every result arrives once, in order."""
    marker = str(tmp_path / "died")

    def fragile(shared, i):
        import os
        if i == 3 and not os.path.exists(shared):
            open(shared, "w").close()
            os._exit(1)
        return 10 * i
    assert list(cluster.map(fragile, range(8), shared=marker)) == [10 * i for i in range(8)]
    assert os.path.exists(marker)


def _generate(tmp_path, name, *extra):
    r = subprocess.run([PY, "-m", "synth", "generate", "scenario2", "-n", "5", "--seed", "7",
                        "--size", "40", "40", "-q", "-o", name, *extra], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    return tmp_path / name


def test_generation_on_a_local_cluster_is_the_same_bytes_as_in_process(tmp_path):
    from vnumba.io.dataset import SyntheticDataset
    a = _generate(tmp_path, "a.h5")
    b = _generate(tmp_path, "b.h5", "--scheduler", "local:2")
    with SyntheticDataset(a) as da, SyntheticDataset(b) as db:
        assert da.content_hash() == db.content_hash()   # the stored chunks, byte for byte
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert dict(fa.attrs) .keys() == dict(fb.attrs).keys()
        for k in fa.attrs:
            assert str(fa.attrs[k]) == str(fb.attrs[k]), k


def test_an_unreachable_scheduler_is_one_line_and_nothing_is_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    r = subprocess.run([PY, "-m", "synth", "generate", "scenario2", "-n", "2", "--seed", "0",
                        "-q", "-o", "g.h5", "--scheduler", "tcp://127.0.0.1:9"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "tcp://127.0.0.1:9" in lines[0] and "cannot reach" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stub,words", [
    ("raise ModuleNotFoundError(\"No module named 'vnumba'\")", "cannot import vnumba"),
    ("__version__ = '0.0.0+other'", "has vnumba 0.0.0+other"),
])
def test_a_worker_without_the_package_is_one_line_and_nothing_is_written(tmp_path, stub, words):
    """A scheduler and one worker started as a user would (``dask scheduler``, ``dask
    worker``), the worker seeing a ``vnumba`` that fails to import or is another version."""
    import time

    import distributed
    dask_cli = Path(PY).parent / "dask"
    if not dask_cli.exists():
        pytest.skip("the dask command is not installed next to this Python")
    (tmp_path / "stub" / "vnumba").mkdir(parents=True)
    (tmp_path / "stub" / "vnumba" / "__init__.py").write_text(stub + "\n")
    work = tmp_path / "w"
    work.mkdir()
    sf = tmp_path / "scheduler.json"
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = [subprocess.Popen([str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sf)], env=base,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        t0 = time.monotonic()
        while not sf.exists() and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        procs.append(subprocess.Popen(
            [str(dask_cli), "worker", "--scheduler-file", str(sf), "--nthreads", "1", "--no-nanny",
             "--no-dashboard"], env=dict(base, PYTHONPATH=str(tmp_path / "stub")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(scheduler_file=str(sf), timeout=120) as c:
            c.wait_for_workers(1, timeout=120)
            address = c.scheduler.address
        r = subprocess.run([PY, "-m", "synth", "generate", "scenario2", "-n", "2", "--seed", "0",
                            "-q", "-o", "g.h5", "--scheduler", address], cwd=work,
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        for p in procs[::-1]:
            p.terminate()
            p.wait(timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert words in lines[0] and address in lines[0], lines[0]
    assert list(work.iterdir()) == []


def test_a_scheduler_without_workers_is_refused_after_the_wait(monkeypatch):
    import distributed

    import vnumba.executor as E
    monkeypatch.setattr(E, "FIRST_WORKER_TIMEOUT_S", 2.0)
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0", processes=False) as lc:
        with pytest.raises(SchedulerError, match="no worker joined the scheduler within 2 s"):
            get_executor(lc.scheduler_address)


def test_workers_and_scheduler_together_are_refused(tmp_path):
    r = subprocess.run([PY, "-m", "synth", "generate", "scenario2", "-n", "2", "--seed", "0",
                        "-q", "-o", "g.h5", "--workers", "2", "--scheduler", "local:2"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode != 0 and "--workers or --scheduler" in r.stderr
    assert list(tmp_path.iterdir()) == []


def _train(tmp_path, name, executor, dtype, class_weights=None):
    from test_train import _three_class_dataset, _toy_dataset

    from vnumba.io.models import load_model
    from vnumba.training.trainer import TrainOptions, train
    data = tmp_path / ("D.h5" if class_weights is None else "D3.h5")
    if not data.exists():
        (_toy_dataset if class_weights is None else _three_class_dataset)(data, n=6)
    opts = TrainOptions(data=str(data), steps=2, nf_u=4, nf_m=2, ks_u=5, ks_m=3, ks=3, iters=3,
                        batch=3, crop=12, dtype=dtype, out=str(tmp_path / f"{name}.h5"),
                        checkpoint_every=2, quiet=True, class_weights=class_weights)
    train(opts, executor=executor)
    import csv
    with open(tmp_path / f"{name}.csv", newline="") as fh:
        log = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    return load_model(tmp_path / f"{name}.h5").params, log


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_data_parallel_training_gives_the_in_process_model_bit_for_bit(cluster, tmp_path, dtype):
    """Each image of a batch a task on 2 workers, gradients summed by the driver in the images'
    order from zero: the same floating-point sum as in-process training (which accumulates the
    batch gradient image by image), in float64 and in float32."""
    a, log_a = _train(tmp_path, "here", None, dtype)
    b, log_b = _train(tmp_path, "dask", cluster, dtype)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert log_a == log_b


def test_data_parallel_training_with_class_weights_gives_the_in_process_model(cluster, tmp_path):
    """The workers weigh the classes of the loss as in-process training does."""
    a, log_a = _train(tmp_path, "here", None, "float64", (1.0, 1.0, 5.0))
    b, log_b = _train(tmp_path, "dask", cluster, "float64", (1.0, 1.0, 5.0))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert log_a == log_b
    c, _ = _train(tmp_path, "plain", None, "float64", (1.0, 1.0, 1.0))  # the article's loss
    assert a["Km"].shape == c["Km"].shape and not np.array_equal(a["Km"], c["Km"])


def test_train_with_a_dataset_the_workers_cannot_read_is_one_line(tmp_path):
    r = subprocess.run([PY, "-m", "vnumba.train", "missing.h5", "--scheduler", "local:1",
                        "--iters", "1", "--out", "m.h5"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "missing.h5" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_worker_lost_during_a_training_iteration_changes_nothing(cluster, tmp_path, monkeypatch):
    """The first image task of the run ends its worker process: Dask reruns the task on a
    worker that lives, the iteration completes, and the model is the in-process one."""
    import cloudpickle
    import dask_helpers

    import vnumba.training.parallel as P
    cloudpickle.register_pickle_by_value(dask_helpers)
    a, log_a = _train(tmp_path, "here", None, "float64")
    marker = tmp_path / "a_worker_died"
    monkeypatch.setattr(P, "_image_task", dask_helpers.dying_once(P._image_task, marker))
    b, log_b = _train(tmp_path, "dask", cluster, "float64")
    assert marker.exists()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert log_a == log_b
