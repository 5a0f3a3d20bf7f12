"""Device settings applied before the model is built: core pinning (validated, undone for the
next in-process job), OMP/MKL thread variables kept equal to the threads in force, and what
the record captures about the machine."""
from __future__ import annotations

import os

import pytest

from ptflow.app.settings import compile_plan
from ptflow.core.errors import ConfigError
from ptflow.measure import device, device_info
from ptflow.measure.device import DeviceConfig
from tests.conftest import compose


@pytest.mark.parametrize("given, cores", [("0-3,6", [0, 1, 2, 3, 6]), ([2, 0, 2], [0, 2]), (1, [1]),
                                          (" 4 , 1-2", [1, 2, 4])])
def test_cpu_lists_parse_as_taskset_writes_them(given, cores):
    assert device_info.parse_cpu_list(given) == cores
    assert device_info.parse_cpu_list(device_info.cpu_list_text(cores)) == cores


def test_cpu_list_text_compresses_runs():
    assert device_info.cpu_list_text([6, 0, 1, 2, 3]) == "0-3,6" and device_info.cpu_list_text([5]) == "5"


@pytest.mark.parametrize("bad, says", [("abc", "not a core number"), ("3-1", "backwards"), ("", "at least one"),
                                       ("-1", "not a range"), (True, "CPU list")])
def test_a_malformed_cpu_list_is_a_config_error_naming_the_key(bad, says):
    with pytest.raises(ConfigError) as caught:
        DeviceConfig(cpus=bad)
    assert "cpus" in str(caught.value) and says in str(caught.value)


def test_cores_that_do_not_exist_are_refused_at_plan_time():
    config, choices = compose("device.cpus=0-4096")
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, choices)
    text = str(caught.value)
    assert "device.cpus" in text and "do not exist" in text
    assert device_info.cpu_list_text(device.started_on()) in text   # says which cores there are


@pytest.fixture
def restore_process(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    for name in device.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    device.apply(DeviceConfig(threads=threads))
    for name in device.THREAD_VARIABLES:
        os.environ.pop(name, None)


def test_pinning_applies_and_the_next_job_gets_its_cores_back(restore_process):
    if len(device.started_on()) < 2:
        pytest.skip("needs two cores")
    last = device.started_on()[-1]
    device.apply(DeviceConfig(cpus=str(last)))
    assert os.sched_getaffinity(0) == {last}
    settings = device.capture(DeviceConfig(cpus=str(last)))
    assert settings["cpu_affinity"] == str(last) and settings["usable_cores"] == 1 and settings["threads"] == 1
    device.apply(DeviceConfig())   # a later job of the same process, without device.cpus
    assert sorted(os.sched_getaffinity(0)) == device.started_on()


def test_thread_variables_follow_the_threads_in_force(restore_process, monkeypatch):
    monkeypatch.setattr(device, "_SET_BY_US", {})
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    warnings = dict(device.apply(DeviceConfig(threads=1)))
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS=7" in warnings["device.omp_num_threads"]
    assert "device.mkl_num_threads" not in warnings   # not set by the user: set quietly
    assert device.apply(DeviceConfig(threads=2)) == []   # a later in-process job: 1 was ptflow's, not the user's


def test_capture_describes_the_machine():
    settings = device.capture(DeviceConfig())
    assert settings["cpu_count"] == os.cpu_count()
    assert device_info.parse_cpu_list(settings["cpu_affinity"]) == sorted(os.sched_getaffinity(0))
    assert settings["device_name"] and settings["threads"] >= 1
    assert "cpu_governor" not in settings or settings["cpu_governor"]


def test_no_nvidia_smi_means_no_gpu_state(monkeypatch):
    monkeypatch.setattr(device_info.shutil, "which", lambda name: None)
    assert device_info.gpu_state(0) == {}


@pytest.mark.cuda
def test_gpu_state_reads_temperature_clocks_and_driver():
    state = device_info.gpu_state(0)
    assert state["gpu_driver"] and state["gpu_temp_c"] > 0 and state["gpu_sm_clock_mhz"] > 0
