"""Starting one run as several processes on one host: torchrun (``torch.distributed.run``), elastic,
with the c10d rendezvous on loopback. The caller's process (``mmkd train``, or a worker's job process)
starts it as a subprocess and waits; each rank joins the group (``core.parallel.init_from_environment``)
and calls ``core.engine.trainer.train`` with the same arguments. With ``max_restarts`` the agent
restarts every rank when one fails, and they resume from the newest checkpoint.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

#: prctl's request for a signal when the parent process dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the rendezvous's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun_command(procs: int, module: str, args: list[str], *, max_restarts: int = 0) -> list[str]:
    """The command that runs ``python -m module args`` as ``procs`` ranks on this host (torchrun, through
    :func:`main`)."""
    return [
        sys.executable,
        "-m",
        "core.engine.launch",
        "--nnodes=1",
        f"--nproc-per-node={procs}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.5",
        "--module",
        module,
        *args,
    ]


def main() -> None:
    """torchrun (``torch.distributed.run``) with the ranks' process groups on a store of their own:
    sharing the rendezvous's TCP store (torch's default) lets ranks restarted after a crash read the
    addresses of the ranks they replace, and the restarted group never forms (pytorch issue 135712).
    On Linux the agent also ends (SIGTERM, which it passes to its ranks) when the process that started
    it dies, even by SIGKILL or ``os._exit``: ranks never outlive the job's process."""
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    starter = os.getppid()
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != starter:  # it died before the request took effect
            sys.exit(1)
    from torch.distributed.run import main as torchrun

    torchrun()


if __name__ == "__main__":
    main()
