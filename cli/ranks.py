"""One rank of a local ``mmkd train`` on several processes: ``python -m cli.ranks SPEC WORKDIR`` under
torchrun (``core.engine.launch``). Every rank reads the data and trains; rank 0 writes the run folder's
metrics.jsonl, checkpoints, student and summary.json, and prints its progress as log lines."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from core import parallel
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.tracking_local import MetricsFileTracker
from core.engine.trainer import train
from core.errors import MmkdError, one_line
from core.spec import load_spec


def main(spec_path: str, workdir: str) -> int:
    """Train ``spec_path`` into ``workdir`` as this rank; 0 when the run finished, 1 with one line on stderr."""
    spec = load_spec(Path(spec_path))
    parallel.init_from_environment(spec.resources.device)
    level = logging.INFO if parallel.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=f"rank {parallel.rank()}: %(message)s")
    from cli.local import load_data

    folder = Path(workdir)
    store = LocalCheckpointStore(folder / "checkpoints", keep_last=spec.checkpoint.keep_last)
    try:
        data = load_data(spec)
        if parallel.is_main():
            with MetricsFileTracker(folder / "metrics.jsonl") as record:
                train(spec, workdir=folder, tracker=record, checkpoints=store, data=data)
        else:  # it reports nothing and writes nothing (core.engine.trainer.train)
            train(spec, workdir=folder, checkpoints=store, data=data)
    except MmkdError as exc:
        print(f"rank {parallel.rank()}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    finally:
        parallel.leave()
    return 0


if __name__ == "__main__":
    parallel.end_rank(main(*sys.argv[1:3]))
