"""The batch shared out over worker processes (`tinyddim.processes`) against the same batch in threads."""

import io
import logging
import pickle
import sys

import numpy as np
import pytest

from models import torch_eps
from tinyddim import parallel, processes
from tinyddim.unet import unet_forward

TOLERANCE = 2.5e-5  # as tests/test_unet.py


@pytest.fixture
def two_cores(monkeypatch):
    """BLAS as if it ran 2 threads (the suite runs one); the workers stopped afterwards."""
    monkeypatch.setattr(parallel, "cpu_threads", lambda: 2)
    monkeypatch.setattr(processes, "ENABLED", True)
    yield
    processes.stop()


def in_threads(unet, x, t, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(processes, "ENABLED", False)
        return unet(x, t)


def test_worker_processes_give_the_threads_result_bit_for_bit_and_get_the_weights_once(
        mnist_unet, mnist_model, two_cores, monkeypatch):
    x = np.random.default_rng(1).standard_normal((5, 1, 16, 16), dtype=np.float32)
    t = [0, 10, 500, 900, 999]
    sent = []
    send = processes._send
    monkeypatch.setattr(processes, "_send", lambda worker, message: sent.append(message[0]) or send(worker, message))
    eps = mnist_unet(x, t)
    assert len(processes._workers) == 1 and sent == ["model", "forward"]  # slice 0 here, slice 1 in the worker
    assert np.array_equal(eps, in_threads(mnist_unet, x, t, monkeypatch))
    assert np.abs(eps - torch_eps(mnist_model, x, t)).max() <= TOLERANCE
    assert np.array_equal(mnist_unet(x[:3], 7), in_threads(mnist_unet, x[:3], 7, monkeypatch))
    assert sent == ["model", "forward", "forward"]  # the worker kept the weights


def test_three_cores_take_two_workers_and_a_new_model_is_sent_again(mnist_unet, monkeypatch):
    from tinyddim import UNet2DModel

    monkeypatch.setattr(parallel, "cpu_threads", lambda: 3)
    monkeypatch.setattr(processes, "ENABLED", True)
    try:
        x = np.random.default_rng(2).standard_normal((7, 1, 16, 16), dtype=np.float32)
        assert np.array_equal(mnist_unet(x, 300), in_threads(mnist_unet, x, 300, monkeypatch))
        assert len(processes._workers) == 2
        zeroed = UNet2DModel(mnist_unet.config, conv_out_zeroed(mnist_unet.params))
        assert np.array_equal(zeroed(x, 300), unet_forward(zeroed.params, zeroed.config, x, 300))
        assert not np.array_equal(zeroed(x, 300), mnist_unet(x, 300))
    finally:
        processes.stop()


def conv_out_zeroed(params):
    """The tree with conv_out's weights zeroed (a model whose ε differs from the original's)."""
    from tinyddim.weights import map_tree

    tree = map_tree(lambda w: w.copy(), params)
    tree["conv_out"]["weight"][...] = 0
    return tree


def test_a_dead_worker_costs_one_batch_in_threads_and_a_new_worker_after(mnist_unet, two_cores, monkeypatch,
                                                                         caplog):
    x = np.random.default_rng(3).standard_normal((4, 1, 16, 16), dtype=np.float32)
    expected = in_threads(mnist_unet, x, 50, monkeypatch)
    assert np.array_equal(mnist_unet(x, 50), expected)
    first = processes._workers[0]
    first.kill()
    first.wait()
    with caplog.at_level(logging.WARNING, logger="tinyddim.processes"):
        assert np.array_equal(mnist_unet(x, 50), expected)
    assert "this batch runs in threads" in caplog.text and processes._workers == []
    assert np.array_equal(mnist_unet(x, 50), expected)
    assert len(processes._workers) == 1 and processes._workers[0].pid != first.pid


def test_processes_apply_to_small_models_and_numpy_batches_with_cores_to_spare(mnist_unet, mnist_model,
                                                                               monkeypatch):
    batch = np.zeros((2, 1, 16, 16), np.float32)
    monkeypatch.setattr(processes, "ENABLED", True)
    monkeypatch.setattr(parallel, "cpu_threads", lambda: 1)
    assert not processes.applies(mnist_unet, batch)
    monkeypatch.setattr(parallel, "cpu_threads", lambda: 2)
    assert processes.applies(mnist_unet, batch) and not processes.applies(mnist_unet, batch[:1])
    size = 4 * sum(parameter.numel() for parameter in mnist_model.parameters())  # diffusers' float32 weights
    assert processes.weight_bytes(mnist_unet.params) == size
    monkeypatch.setattr(processes, "WEIGHT_BYTES", size - 1)
    assert not processes.applies(mnist_unet, batch)  # a larger model stays in threads
    monkeypatch.setattr(processes, "WEIGHT_BYTES", size)
    monkeypatch.setattr(processes.multiprocessing.current_process(), "daemon", True, raising=False)
    assert not processes.applies(mnist_unet, batch)  # a daemonic process (a Dask worker, whose cores Dask shares out)


def test_the_worker_loop_answers_each_forward_and_names_what_failed(mnist_unet, monkeypatch):
    x = np.random.default_rng(4).standard_normal((2, 1, 16, 16), dtype=np.float32)
    messages = io.BytesIO()
    for message in [("model", 1, mnist_unet.params, mnist_unet.config), ("forward", 1, x, [3, 4]),
                    ("forward", 2, x, [3, 4])]:
        pickle.dump(message, messages)
    messages.seek(0)
    replies = io.BytesIO()
    pipes = io.TextIOWrapper(messages), io.TextIOWrapper(replies)  # kept: main() lets go of sys.stdout
    monkeypatch.setattr(sys, "stdin", pipes[0])
    monkeypatch.setattr(sys, "stdout", pipes[1])
    processes.main()  # returns at the end of its input
    replies.seek(0)
    done, failed = pickle.load(replies), pickle.load(replies)
    assert done[0] == "done" and np.array_equal(done[1], unet_forward(mnist_unet.params, mnist_unet.config, x, [3, 4]))
    assert failed == ("failed", "KeyError: 2")


def test_an_interrupted_call_leaves_no_reply_for_the_next(mnist_unet, two_cores, monkeypatch):
    x = np.random.default_rng(5).standard_normal((4, 1, 16, 16), dtype=np.float32)
    mnist_unet(x, 20)
    import tinyddim.unet

    forward = tinyddim.unet.unet_forward
    with monkeypatch.context() as patch:  # this process's slice interrupted, the worker's slice sent
        patch.setattr(tinyddim.unet, "unet_forward", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            mnist_unet(x, 20)
    assert processes._workers == [] and tinyddim.unet.unet_forward is forward
    assert np.array_equal(mnist_unet(x, 900), in_threads(mnist_unet, x, 900, monkeypatch))
