"""Shared test settings and helpers."""

import socket
import time

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The test models are tiny: one intra-op thread is as fast as two, and
    # far faster when other processes compete for the cores.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, outdir, world, timeout):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        fn, args=(_free_port(), outdir), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers did not finish in {timeout}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()


@pytest.fixture(scope="session")
def spawn_ranks():
    """``spawn_ranks(fn, outdir, world=2, timeout=150)`` runs ``fn(rank,
    port, outdir)`` on ``world`` spawned processes and fails the test if
    they fail twice. The free port is released before the workers bind it,
    so another process may take it in between: one retry on a new port."""

    def spawn(fn, outdir, world=2, timeout=150):
        try:
            _spawn(fn, outdir, world, timeout)
        except Exception as first:  # noqa: BLE001
            try:
                _spawn(fn, outdir, world, timeout)
            except Exception as second:  # noqa: BLE001
                pytest.fail(f"distributed workers failed twice:\n{first}\n---\n{second}")

    return spawn
