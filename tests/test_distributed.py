"""sample_to_folder on a Dask LocalCluster of two single-thread worker processes: the same PNGs as one
process, and a worker killed during the run loses nothing."""

import filecmp
import os
import signal
import threading
import time

import pytest
from distributed import Client

import tinyddim as td
from tinyddim.cli import main as cli
from tinyddim.distributed import TRIM, local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(num_inference_steps=3, batch_size=2, progress=False)
N = 12


@pytest.fixture(scope="module")
def client():
    path = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    cluster = local_cluster(2, env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    client = Client(cluster, timeout=30)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def pipe(bundled_pipe):
    return bundled_pipe


@pytest.fixture(scope="module")
def reference(one_process_folder):
    return one_process_folder(N, **RUN)


def same_pngs(a, b, names=None):
    names = names or sorted(name for name in os.listdir(a) if name.endswith(".png"))
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return len(names) > 0 and not mismatch and not errors


def test_the_local_workers_run_without_dask_s_malloc_trim_threshold(client):
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 by default, which halves the NumPy UNet's speed
    assert list(client.run(os.environ.get, TRIM).values()) == [None, None]
    assert list(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == ["1", "1"]


def test_two_dask_workers_write_the_same_folder_as_one_process(client, pipe, reference, tmp_path):
    result = td.sample_to_folder(tmp_path / "dask", N, pipeline=pipe, client=client, **RUN)
    assert (result.written, result.skipped, result.in_folder) == (N, 0, N)
    assert same_pngs(reference, tmp_path / "dask")
    assert (tmp_path / "dask" / "manifest.json").read_text() == (reference / "manifest.json").read_text()
    again = td.sample_to_folder(tmp_path / "dask", N, pipeline=pipe, client=client, **RUN)
    assert (again.written, again.skipped) == (0, N)


def run_and_kill(client, pipe, out, which):
    """sample_to_folder in a thread; once its first PNG is there, SIGKILL the workers `which` picks from the
    worker pids. Returns (outcome, PNGs at the kill)."""
    pids = which(list(client.run(os.getpid).values()))
    outcome = {}

    def run():
        try:
            outcome["result"] = td.sample_to_folder(out, N, pipeline=pipe, client=client, **RUN)
        except BaseException as err:  # noqa: BLE001  (reported by the assertions of the tests)
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.is_dir() and any(n.endswith(".png") for n in os.listdir(out))):
        time.sleep(0.002)
    at_kill = sum(name.endswith(".png") for name in os.listdir(out))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive(), "the run did not finish after the workers were killed"
    return outcome, at_kill


@pytest.mark.parametrize("which", [lambda pids: pids[:1], lambda pids: pids], ids=["one worker", "every worker"])
def test_workers_killed_during_the_run_lose_nothing(client, pipe, reference, tmp_path, which):
    # killing every worker loses every copy of the scattered pipeline: run_chunks sends it again to the
    # workers the nannies restart, and resubmits the chunks not finished
    out = tmp_path / "killed"
    outcome, at_kill = run_and_kill(client, pipe, out, which)
    assert "error" not in outcome, outcome.get("error")
    assert 1 <= at_kill < N, "the workers must be killed mid-run"
    assert outcome["result"].in_folder == N and same_pngs(reference, out)
    assert all(name.endswith(".png") or name == "manifest.json" or name.startswith(".tmp-") for name in os.listdir(out))
    client.wait_for_workers(2, timeout=60)  # the next test gets both workers back


def test_cli_dask_local_cluster_makes_the_same_images(reference, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["sample", "--num-images", "4", "--out-dir", str(out), "--steps", "3", "--batch-size", "2",
                "--dask", "local:2"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert same_pngs(reference, out, [f"{k:06d}.png" for k in range(4)])  # image k does not depend on N
