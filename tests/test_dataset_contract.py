"""One dataset contract (issue 13): ``synth`` writes and training reads the same schema,
defined once in :mod:`vnumba.io.dataset`; a file one side refuses the other refuses too."""
import ast
from pathlib import Path

import h5py
import numpy as np
import pytest

import vnumba.io.dataset as contract
from synth import writer as writer_mod
from synth.script import load_script
from vnumba.io.dataset import SyntheticDataset, write_dataset_arrays

ROOT = Path(__file__).resolve().parents[1]


def test_writer_and_reader_share_the_schema_objects():
    assert writer_mod.SCHEMA_VERSION is contract.SCHEMA_VERSION
    assert writer_mod.DatasetError is contract.DatasetError
    assert writer_mod.DatasetError.__module__ == "vnumba.io.dataset"
    assert writer_mod.validate_file is contract.validate_file
    assert writer_mod.check_sample is contract.check_sample
    # synth/writer.py imports the contract, it never redefines a piece of it
    tree = ast.parse((ROOT / "synth" / "writer.py").read_text())
    defined = {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
               for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
               if isinstance(t, ast.Name)}
    defined |= {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert not defined & set(contract.__all__) - {"write_dataset_arrays"}, defined


def _raw(path, c=3, n=2, h=6, w=5, version=1, gm_shape=None, gu_c=None, dtype=np.float32,
         attrs=None):
    """A dataset file built by hand (bypassing every writer's checks)."""
    with h5py.File(path, "w") as f:
        f["u0"] = np.full((n, c, h, w), 0.5, dtype)
        f["gu"] = np.full((n, c if gu_c is None else gu_c, h, w), 0.5, dtype)
        f["gm"] = np.zeros(gm_shape or (n, h, w), dtype)
        if version is not None:
            f.attrs["schema_version"] = version
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def _reader_verdict(p):
    try:
        with SyntheticDataset(p) as ds:
            return ("ok", ds.channels)
    except contract.DatasetError as e:
        return ("refused", type(e))


def _synth_verdict(p):
    try:
        info = writer_mod.dataset_info(p)
        writer_mod.read_sample(p, 0)
        return ("ok", info["channels"])
    except writer_mod.DatasetError as e:
        return ("refused", type(e))


@pytest.mark.parametrize("kw,ok", [
    ({"c": 1}, True), ({"c": 2}, True), ({"c": 3}, True), ({"c": 4}, True),
    ({"c": 0}, False),                       # the channel rule: C >= 1
    ({"c": 3, "gu_c": 1}, False),            # u0 and gu must agree
    ({"gm_shape": (2, 6, 4)}, False),
    ({"version": 2}, False), ({"version": None}, False), ({"version": "1"}, False),
    ({"dtype": np.int32}, False), ({"n": 0}, False), ({"h": 0}, False),
    ({"attrs": {"scenario": 3}}, False), ({"attrs": {"script": 1.5}}, False),
    ({"attrs": {"scenario": "scenario1", "script": ""}}, True),
])
def test_synth_and_the_training_reader_accept_and_refuse_the_same_files(tmp_path, kw, ok):
    p = _raw(tmp_path / "d.h5", **kw)
    r, s = _reader_verdict(p), _synth_verdict(p)
    assert r == s, (kw, r, s)
    assert (r[0] == "ok") == ok
    if ok:
        assert r[1] == kw.get("c", 3)


def test_the_contract_writer_refuses_what_the_reader_refuses_and_writes_nothing(tmp_path):
    p = tmp_path / "d.h5"
    p.write_bytes(b"previous")
    u = np.zeros((2, 0, 4, 4), np.float32)          # C = 0 breaks the channel rule
    with pytest.raises(contract.DatasetError, match="channels"):
        write_dataset_arrays(p, u, u, np.zeros((2, 4, 4)))
    with pytest.raises(contract.DatasetError, match="inconsistent shapes"):
        write_dataset_arrays(p, np.zeros((2, 3, 4, 4)), np.zeros((2, 1, 4, 4)),
                             np.zeros((2, 4, 4)))
    assert p.read_bytes() == b"previous"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["d.h5"]
    # and what it writes (any C >= 1) both readers accept
    for c in (1, 2, 3):
        u = np.full((2, c, 4, 4), 0.25, np.float32)
        write_dataset_arrays(p, u, u, np.zeros((2, 4, 4)), scenario="toy")
        assert _reader_verdict(p) == _synth_verdict(p) == ("ok", c)


def test_synth_writer_output_passes_the_reader_with_three_channels(tmp_path):
    s = load_script("scenario1").with_size(24, 28)
    out = writer_mod.write_dataset(tmp_path / "s1.h5", s, 2, seed=0, progress=False)
    with SyntheticDataset(out) as ds:
        assert (ds.n, ds.channels, ds.height, ds.width) == (2, 3, 24, 28)
        assert ds.attrs["schema_version"] == contract.SCHEMA_VERSION
        u0, gu, gm = ds.read(1)
    np.testing.assert_array_equal(u0, writer_mod.read_sample(out, 1)[0])


@pytest.mark.parametrize("bad,match", [("nan", "contains NaN"),
                                       ("range", r"has values outside \[0, 1\]")])
def test_a_sample_synth_refuses_the_reader_refuses_too(tmp_path, monkeypatch, bad, match):
    s = load_script("scenario2").with_size(16, 16)
    real = writer_mod._make

    def spoil(shared, i):
        i, noisy, clean, mask = real(shared, i)
        if i == 1:
            noisy = noisy.copy()
            noisy[0, 0, 0] = np.nan if bad == "nan" else 1.5
        return i, noisy, clean, mask

    target = tmp_path / "out.h5"
    target.write_bytes(b"old contents")
    monkeypatch.setattr(writer_mod, "_make", spoil)
    with pytest.raises(contract.DatasetError, match=f"out.h5: sample 1 of u0 {match}"):
        writer_mod.write_dataset(target, s, 3, seed=1, progress=False)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    # the same sample, stored without the writer's checks, is refused on reading
    samples = [spoil((s, None, 1), i)[1:] for i in range(3)]
    p = tmp_path / "unchecked.h5"
    write_dataset_arrays(p, *(np.stack([x[k] for x in samples]) for k in range(3)),
                         check_values=False)
    with SyntheticDataset(p) as ds:
        ds.read(0)
        with pytest.raises(contract.DatasetError, match=f"sample 1 of u0 {match}"):
            ds.read(1)
