"""The networks by name (vnumba/vn/networks.py): one record per architecture, used by the model
files, the backends and the trainer; one trainer interface for both backends."""
import dataclasses

import numpy as np
import pytest

from vnumba.io.models import Model, load_model, save_model
from vnumba.vn.backend import CPUTrainer, Trainer, get_backend, run_network
from vnumba.vn.networks import NETWORKS, Network, get_network

TINY = {"vn": dict(n_steps=1, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3), "unet": dict(width=4, scales=2)}


def _model(name, seed=0):
    net = get_network(name)
    cfg = net.config(**TINY[name])
    return Model(name, cfg, net.init_params(cfg, np.random.default_rng(seed), np.float32), {"channels": 3})


def test_every_network_has_a_complete_record_and_unknown_names_are_refused():
    assert NETWORKS == ("vn", "unet")
    for name in NETWORKS:
        net = get_network(name)
        assert isinstance(net, Network) and net.name == name and get_network(name) is net
        assert all(getattr(net, f.name) is not None for f in dataclasses.fields(Network))
        assert set(net.size_fields) <= {f.name for f in dataclasses.fields(net.config)}
        assert "cpu" in net.devices and net.default_lr > 0
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        get_network("resnet")


@pytest.mark.parametrize("name", NETWORKS)
def test_model_files_of_every_network_round_trip_and_apply_on_the_cpu(tmp_path, name):
    m = _model(name)
    back = load_model(save_model(tmp_path / f"{name}.h5", m))
    assert back.arch == name and back.config == m.config
    x = np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32)
    u, mask = back.apply(x)
    u_ref, m_ref = get_network(name).forward(m.params, m.config, x)
    np.testing.assert_array_equal(u, u_ref)
    np.testing.assert_array_equal(mask, m_ref)


def test_a_damaged_unet_file_is_refused_at_load_naming_the_file(tmp_path):
    m = _model("unet")
    m.params.pop("head_b")
    save_model(tmp_path / "u.h5", m)
    with pytest.raises(ValueError, match=r"u\.h5.*head_b"):
        load_model(tmp_path / "u.h5")


def test_run_network_checks_the_input_and_the_device():
    m = _model("unet")
    with pytest.raises(ValueError, match="the model expects 3"):
        run_network("unet", m.config, m.params, np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        m.apply(np.full((1, 3, 8, 8), np.nan, np.float32))
    m.device = "cuda"
    with pytest.raises(ValueError, match="the 'unet' model runs on the cpu only, not 'cuda'"):
        m.apply(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("name", NETWORKS)
def test_the_cpu_trainer_is_a_trainer_whose_lr_is_adams(name):
    m = _model(name)
    tr = get_backend("cpu").trainer(name, m.config, m.params, 1e-3)
    assert isinstance(tr, CPUTrainer) and isinstance(tr, Trainer)
    tr.lr = 2e-4
    assert tr.lr == tr.opt.lr == 2e-4


def test_the_cuda_trainer_is_a_trainer(engine):
    m = _model("vn")
    tr = engine.CudaTrainer(m.config, m.params, 1e-3)
    assert isinstance(tr, Trainer)
    tr.lr = 2e-4
    assert tr.lr == 2e-4


def test_a_model_runs_on_the_backend_its_device_names(engine):
    m = _model("vn")
    x = np.random.default_rng(2).random((1, 3, 8, 8)).astype(np.float32)
    u_cpu, m_cpu = m.apply(x)
    m.device = "cuda"
    u_gpu, m_gpu = m.apply(x)
    np.testing.assert_allclose(u_gpu, u_cpu, atol=1e-5)
    np.testing.assert_allclose(m_gpu, m_cpu, atol=1e-5)
