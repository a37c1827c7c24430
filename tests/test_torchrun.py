"""``torchrun --nproc-per-node 2 -m graphinterp.cli train`` (gloo, 2 CPU processes) matches one process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from graphinterp.common.distributed import Launch, check_device, launch_from_env, process_group
from graphinterp.common.errors import GraphinterpError

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

# tiny: 256 digits, batches 64 (32 per rank), one warm-up and one modular epoch
ARGS = ["--dataset", "digits", "--k", "2", "--warmup-epochs", "1", "--epochs", "1", "--max-train", "256",
        "--device", "cpu", "--quiet"]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")  # torchrun sets 1 thread too
    return env


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _torchrun(*args: str) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), *args]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@needs_gloo
def test_torchrun_two_processes_match_one_process(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    one = subprocess.Popen([sys.executable, "-m", "graphinterp.cli", "train", *ARGS, "--out", "a.pt"],
                           cwd=tmp_path / "one", env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the one-process run goes on meanwhile (the results do not depend on timing)
        ddp = _run(_torchrun("-m", "graphinterp.cli", "train", *ARGS, "--out", "a.pt"), tmp_path / "ddp")
        _, one_err = one.communicate(timeout=300)
    finally:
        if one.poll() is None:
            one.kill()
            one.wait()
    assert ddp.returncode == 0, ddp.stderr
    assert one.returncode == 0, one_err
    # rank 0 alone prints and writes: without the process group both ranks would train alone and print twice
    assert ddp.stdout.count("final test accuracy") == 1, ddp.stdout
    assert sorted(os.listdir(tmp_path / "ddp")) == ["a.pt"]  # no second file, no lock or temp file left
    a, b = _weights(tmp_path / "ddp" / "a.pt"), _weights(tmp_path / "one" / "a.pt")
    assert a["clustering"] == b["clustering"]
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in b["state_dict"].items():
        # Not bitwise: under DDP each rank sums the gradient of its half of a batch and gloo adds the two
        # halves, a different float32 summation order from one process's matmul over the whole batch, so
        # gradients differ in the last bit or two (~1e-7 relative). Adam (lr 1e-3) carries that into the
        # weights: measured max |difference| 2.2e-8 on weights of size ~0.1 after these 2 epochs, so
        # rtol=1e-5 / atol=1e-6 leaves a margin of ~50 while any real divergence (a missing loss
        # scaling, an unsynchronised step: differences ~1e-3) fails.
        torch.testing.assert_close(a["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@needs_gloo
def test_torchrun_bad_argument_is_one_error_line_per_rank(tmp_path):
    # --resume is refused only under several processes; it is checked with the other arguments, before
    # the process group exists (the usual checks, e.g. --k 1, take the same path)
    proc = _run(_torchrun("-m", "graphinterp.cli", "train", *ARGS, "--resume", "--out", "a.pt"), tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # each rank that prints before torchrun stops the others prints the same one line
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, proc.stderr
    assert errors[0].startswith("error: --resume is not supported under torchrun"), errors
    assert "graphinterp/" not in proc.stderr  # no traceback from our code
    assert os.listdir(tmp_path) == []


def test_transformer_is_refused_under_torchrun(monkeypatch):
    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["train", "--dataset", "modadd", "--out", "never.pt"])
    assert result.exit_code == 2 and "trains on one process only" in result.output


def test_launch_from_env():
    assert launch_from_env({}) == Launch() and launch_from_env({"WORLD_SIZE": "1"}) == Launch()
    full = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launch_from_env(full) == Launch(3, 4, 1)
    with pytest.raises(GraphinterpError, match="MASTER_PORT is not set"):
        launch_from_env({k: v for k, v in full.items() if k != "MASTER_PORT"})
    for bad in ({"RANK": "4"}, {"RANK": "x"}, {"LOCAL_RANK": "-1"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(GraphinterpError):
            launch_from_env({**full, **bad})


def test_check_device_refuses_one_gpu_for_all_ranks():
    assert check_device(Launch(1, 2, 1), "cpu") == torch.device("cpu")
    with pytest.raises(GraphinterpError, match="meta"):
        check_device(Launch(1, 2, 1), "meta")
    if torch.cuda.is_available():
        with pytest.raises(GraphinterpError, match="names one GPU"):
            check_device(Launch(1, 2, 1), "cuda:0")


def test_process_group_outside_a_launch_creates_nothing():
    with process_group(Launch(), torch.device("cpu")) as launch:
        assert launch.is_main and not (dist.is_available() and dist.is_initialized())
