"""The API served on a listening socket inherited from ``mmkd up``: ``python -m cli.serve_socket FD``.

``mmkd up`` binds the port itself before it starts anything, so a busy port is one error line and
whatever answers on that port afterwards can only be this process.
"""

from __future__ import annotations

import socket
import sys

import uvicorn


def serve(fd: int) -> None:
    """Run the API factory with uvicorn on the socket behind ``fd`` until a signal stops it."""
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    config = uvicorn.Config("service.main:create_app", factory=True, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
