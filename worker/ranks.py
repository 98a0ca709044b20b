"""A job on several processes of this host: torchrun's ranks, reporting through the job's process.

The job's process (the Celery task's child, which holds the lease and runs the heartbeat) writes the
validated spec and the prepared data into the attempt's folder, starts torchrun
(``core.engine.launch``, ``--max-restarts`` from ``MMKD_RANK_RESTARTS``) on ``python -m worker.ranks``
and serves rank 0 over a Unix socket in that folder (``multiprocessing.connection``, with a random
authentication key). Every call rank 0 makes on its tracker or checkpoint store is made, in the job's
process, on the real ones (``DatabaseTracker``, the leased storage store), and the answer or the
exception goes back. So the database, the storage and the lease stay in one process at any world size;
the other ranks read only the spec, the data and the checkpoint rank 0 hands them (``core.parallel``).

How an attempt on ranks ends:
- every rank returns: the summary rank 0 wrote;
- the job's process stopped it (cancel, prune, the attempt's deadline, a lost lease): its tracker
  raised that in the job's process, rank 0 got a stop, every rank agreed, and the job's process raises
  what its tracker raised;
- a rank failed with a training error (a non-finite loss, bad data): rank 0 reports it and every rank
  returns, so torchrun does not restart them; the job's process raises it again for the outcome;
- a rank crashed (killed, a lost peer): torchrun restarts every rank up to ``MMKD_RANK_RESTARTS``
  times, and they resume from the newest checkpoint; past that the attempt fails and the job's retry
  policy takes over.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, redirect_stderr, suppress
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import parallel
from core.errors import MmkdError, TrainingCancelled
from core.spec import JobSpec
from core.tracking import CheckpointStore, NullTracker, Tracker

if TYPE_CHECKING:
    from core.data.prepare import PreparedData

log = logging.getLogger(__name__)

SPEC_FILE, DATA_FILE, SOCKET_FILE = "spec.json", "data.pickle", "relay.sock"
ADDRESS_VARIABLE, KEY_VARIABLE = "MMKD_RELAY_ADDRESS", "MMKD_RELAY_KEY"


class RankError(MmkdError):
    """A training error a rank reported (its kind kept for the job's outcome)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ResultFiles:
    """Where rank 0 on another host sends its summary and export: files under the attempt's folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()

    def put(self, relative: str, payload: bytes) -> None:
        """Write ``relative`` (inside the folder, never outside it) whole."""
        path = (self.workdir / relative).resolve()
        if not path.is_relative_to(self.workdir) or path == self.workdir:
            raise ValueError(f"rank relay: {relative!r} is outside the attempt's folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)


class Relay:
    """The job's side: answers rank 0's calls on ``tracker``, ``checkpoints`` and the result files from
    a thread, on a Unix socket (ranks on this host) or on TCP at ``host`` (ranks on a Ray cluster).
    A rank 0 that was restarted connects again; calls of one connection are answered in order."""

    def __init__(
        self, tracker: Tracker, checkpoints: CheckpointStore, *, workdir: Path, host: str | None = None
    ) -> None:
        self.folder = tempfile.mkdtemp(prefix="mmkd-relay-")  # a short path: a socket's is at most 107 bytes
        self.address: str | tuple[str, int] = os.path.join(self.folder, SOCKET_FILE) if host is None else (host, 0)
        self.key = secrets.token_bytes(32)
        self.targets: dict[str, Any] = {"tracker": tracker, "checkpoints": checkpoints, "files": ResultFiles(workdir)}
        self.stopped_with: BaseException | None = None  # what the job's own tracker or store raised
        self.reported: BaseException | None = None  # what rank 0 said it failed with
        self._listener = Listener(self.address, family="AF_UNIX" if host is None else "AF_INET", authkey=self.key)
        self.address = self._listener.address  # the port TCP chose
        self._thread = threading.Thread(target=self._serve, name="rank-relay", daemon=True)
        self._thread.start()

    def environment(self) -> dict[str, str]:
        """What rank 0 under torchrun needs to connect."""
        assert isinstance(self.address, str)
        return {ADDRESS_VARIABLE: self.address, KEY_VARIABLE: self.key.hex()}

    def _serve(self) -> None:
        """Accept rank 0's connections, each answered on a thread of its own: a restarted rank 0 is
        served even while the dead one's connection has not closed (a lost node's half-open socket)."""
        while True:
            try:
                connection = self._listener.accept()
            except OSError:  # closed: the attempt is over
                return
            except Exception:  # a connection that failed authentication
                log.warning("rank relay: a connection was refused", exc_info=True)
                continue
            self.reported = None  # a rank 0 that was restarted: the earlier one's error is over
            threading.Thread(target=self._connection, args=(connection,), name="rank-relay-calls", daemon=True).start()

    def _connection(self, connection: Connection) -> None:
        busy: list[AbstractContextManager[None]] = []  # this rank 0's open busy stretches
        with connection:
            try:
                self._answer(connection, busy)
            except Exception:  # a message that could not be read or answered: this connection is over
                log.warning("rank relay: a connection broke", exc_info=True)
            while busy:  # a rank 0 that died inside a busy stretch
                busy.pop().__exit__(None, None, None)

    def _answer(self, connection: Connection, busy: list[AbstractContextManager[None]]) -> None:
        while True:
            try:
                target, name, args, kwargs = connection.recv()
            except (EOFError, OSError):
                return
            if target == "raised":
                self.reported = rebuild(*args)
                connection.send(("ok", None))
                continue
            try:
                connection.send(("ok", self._call(target, name, args, kwargs, busy)))
            except Exception as error:  # a prune, the deadline, a lost lease, storage: the attempt ends with it
                self.stopped_with = self.stopped_with or error
                connection.send(("stop", f"{type(error).__name__}: {error}"))

    def _call(self, target: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], busy: list[Any]) -> Any:
        if name == "busy_enter":
            stretch = self.targets["tracker"].busy(*args)
            stretch.__enter__()
            busy.append(stretch)
            return None
        if name == "busy_exit":
            if busy:
                busy.pop().__exit__(None, None, None)
            return None
        if target not in self.targets or name.startswith("_"):
            raise ValueError(f"rank relay: no call {target}.{name}")
        return getattr(self.targets[target], name)(*args, **kwargs)

    def close(self) -> None:
        """Stop answering."""
        self._listener.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def rebuild(name: str, kind: str | None, message: str, step: int | None) -> BaseException:
    """An exception like the one a rank raised, from what it sent: the trainer's errors keep their kind
    (and a cancel its step), a memory error stays one, anything else is an internal error."""
    if name == "TrainingCancelled" and step is not None:
        return TrainingCancelled(step)
    if kind is not None:
        return RankError(kind, message)
    if name in ("OutOfMemoryError", "MemoryError"):
        return MemoryError(message)
    return RuntimeError(f"{name}: {message}")


class RelayClient:
    """Rank 0's side of the relay."""

    def __init__(self, address: str | tuple[str, int], key: str) -> None:
        family = "AF_UNIX" if isinstance(address, str) else "AF_INET"
        self.connection = Client(address, family=family, authkey=bytes.fromhex(key))
        self.stop = False  # set once a call raised in the job's process; should_stop then answers true

    def call(self, target: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Make the call in the job's process. When it raised there (a prune, the deadline, a lost lease)
        the answer is None and the run stops at its next stop check, every rank together, as a cancel;
        the job's process keeps the reason."""
        self.connection.send((target, name, args, kwargs))
        status, value = self.connection.recv()
        if status == "stop":
            log.info("the job's process stops the run: %s", value)
            self.stop = True
            return None
        return value

    def report(self, error: BaseException) -> None:
        """Tell the job's process what this rank failed with."""
        kind = error.kind if isinstance(error, MmkdError) else None
        step = error.step if isinstance(error, TrainingCancelled) else None
        self.call("raised", "", type(error).__name__, kind, str(error), step)


class RelayTracker:
    """The tracker rank 0 trains with: each call is the job's tracker's call, and ``should_stop`` is
    also true once any call raised in the job's process (every rank then stops together)."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def _call(self, name: str, **kwargs: Any) -> Any:
        return self.client.call("tracker", name, **kwargs)

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        self._call("on_start", total_epochs=total_epochs, steps_per_epoch=steps_per_epoch, start_step=start_step)

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        self._call("on_step", epoch=epoch, step=step, losses=dict(losses))

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        self._call("on_epoch", epoch=epoch, step=step, metrics=dict(metrics), student_epoch=student_epoch)

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        self._call("on_checkpoint", epoch=epoch, step=step, key=key)

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        self._call("on_warning", kind=kind, message=message, data=dict(data))

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        self.client.call("tracker", "busy_enter", what)
        try:
            yield
        finally:
            self.client.call("tracker", "busy_exit")

    def should_stop(self) -> bool:
        return bool(self._call("should_stop")) or self.client.stop

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        self._call("on_finish", summary=dict(summary))


class RelayCheckpoints:
    """The checkpoint store rank 0 trains with: the job's leased store, through the relay."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def save(self, step: int, payload: bytes) -> str:
        """The stored key ("" when the store refused it: the run stops at its next stop check)."""
        key: str | None = self.client.call("checkpoints", "save", step, payload)
        return key or ""

    def load_latest(self) -> tuple[int, bytes] | None:
        latest: tuple[int, bytes] | None = self.client.call("checkpoints", "load_latest")
        return latest


def _stage(spec: JobSpec, data: PreparedData, workdir: Path) -> Path:
    """The spec and the prepared data as files for this host's ranks."""
    folder = workdir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json")))
    with (folder / DATA_FILE).open("wb") as handle:  # written here, read by this job's ranks only
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return folder


def _ending(relay: Relay, workdir: Path, finished: bool, what: str) -> dict[str, Any]:
    """The summary when the ranks finished; else what stopped or broke them."""
    if relay.stopped_with is not None:
        raise relay.stopped_with
    summary_path = workdir / "summary.json"
    if finished and summary_path.exists():
        summary: dict[str, Any] = json.loads(summary_path.read_text())
        return summary
    if relay.reported is not None:
        raise relay.reported
    raise RuntimeError(f"the job's processes failed ({what})")


def train_on_ranks(
    spec: JobSpec,
    data: PreparedData,
    *,
    tracker: Tracker,
    checkpoints: CheckpointStore,
    workdir: Path,
    restarts: int,
) -> dict[str, Any]:
    """Train ``spec`` as ``resources.procs_per_node`` ranks under torchrun, rank 0 reporting to
    ``tracker`` and ``checkpoints`` through a :class:`Relay`; the summary, or the attempt's error."""
    from core.engine.launch import torchrun_command

    folder = _stage(spec, data, workdir)
    relay = Relay(tracker, checkpoints, workdir=workdir)
    procs = spec.resources.procs_per_node
    command = torchrun_command(procs, "worker.ranks", [str(folder), str(workdir)], max_restarts=restarts)
    log.info("training on %d processes (torchrun, %s)", procs, spec.resources.device)
    ranks = subprocess.Popen(command, env={**os.environ, **relay.environment()})
    try:
        code = ranks.wait()
    finally:  # also when this process is interrupted: the agent passes SIGTERM to every rank
        if ranks.poll() is None:
            ranks.terminate()
            try:
                ranks.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ranks.kill()
                ranks.wait()
        relay.close()
    return _ending(relay, workdir, code == 0, f"torchrun exited with {code}")


def train_on_ray(
    spec: JobSpec,
    data: PreparedData,
    *,
    tracker: Tracker,
    checkpoints: CheckpointStore,
    workdir: Path,
    address: str,
    restarts: int,
    name: str,
) -> dict[str, Any]:
    """Train ``spec`` on the Ray cluster at ``address`` with Ray Train (this process is the driver):
    ``nodes x procs_per_node`` workers, spread over the nodes, restarted up to ``restarts`` times from
    the newest checkpoint; rank 0 reports through a TCP :class:`Relay` and sends its summary and export
    back. The summary, or the attempt's error."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = spec.resources
    with redirect_stderr(sys.__stderr__ or sys.stderr):  # ray.init's faulthandler needs a real file: not Celery's proxy
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    relay = Relay(tracker, checkpoints, workdir=workdir, host=ray.util.get_node_ip_address())
    try:
        trainer = TorchTrainer(
            ray_loop,
            train_loop_config={
                "spec": spec.model_dump_json(),
                "data": ray.put(data),
                "relay": relay.address,
                "key": relay.key.hex(),
            },
            torch_config=TorchConfig(backend="nccl" if resources.device == "cuda" else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=resources.world_size,
                use_gpu=resources.device == "cuda",
                placement_strategy="STRICT_SPREAD" if resources.procs_per_node == 1 else "SPREAD",
            ),
            run_config=RunConfig(name=name, failure_config=FailureConfig(max_failures=restarts)),
        )
        log.info(
            "training on %d processes on %d nodes (Ray Train at %s)", resources.world_size, resources.nodes, address
        )
        finished, what = True, "Ray Train"
        try:
            trainer.fit()
        except Exception as error:  # ray.train.TrainingFailedError: past max_failures
            finished, what = False, f"Ray Train: {type(error).__name__}: {str(error)[:300]}"
    finally:
        relay.close()
        ray.shutdown()
    return _ending(relay, workdir, finished, what)


def ray_loop(config: dict[str, Any]) -> None:
    """A Ray Train worker: Ray formed the process group; train in a folder of this host, rank 0 sending
    its summary and export to the driver."""
    import ray

    os.environ["MMKD_LAUNCHER"] = "ray"
    spec = JobSpec.model_validate_json(config["spec"])
    data = ray.get(config["data"])
    address = tuple(config["relay"]) if isinstance(config["relay"], list | tuple) else config["relay"]
    client = RelayClient(address, config["key"]) if parallel.is_main() else None
    with tempfile.TemporaryDirectory(prefix="mmkd-rank-") as folder:
        train_rank(spec, data, Path(folder), client, send_results=True)


def train_rank(
    spec: JobSpec, data: PreparedData, workdir: Path, client: RelayClient | None, *, send_results: bool
) -> None:
    """Train as this rank of the group, reporting (rank 0) through ``client``. A training error (a
    cancel, a non-finite loss) is reported and ends the rank normally, so the launcher does not restart
    it; any other error is reported and raised (the launcher restarts every rank). With
    ``send_results`` rank 0 sends ``summary.json`` and the export to the job's process."""
    from core.engine.trainer import train

    tracker: Tracker = RelayTracker(client) if client is not None else NullTracker()
    store: CheckpointStore = RelayCheckpoints(client) if client is not None else _NoCheckpoints()
    try:
        train(spec, workdir=workdir, tracker=tracker, checkpoints=store, data=data)
    except BaseException as error:
        if client is not None:
            with suppress(OSError, EOFError):
                client.report(error)
        if isinstance(error, MmkdError):
            log.info("stopped: %s", error)
            return
        raise
    if client is not None and send_results:
        for path in sorted(workdir.rglob("*")):
            if path.is_file() and (path.name == "summary.json" or path.relative_to(workdir).parts[0] == "student"):
                client.call("files", "put", path.relative_to(workdir).as_posix(), path.read_bytes())


def main(folder: str, workdir: str) -> int:
    """One rank under torchrun: join the group and train (:func:`train_rank`); 0 unless it crashed."""
    spec = JobSpec.model_validate_json((Path(folder) / SPEC_FILE).read_text())
    parallel.init_from_environment(spec.resources.device)
    level = logging.INFO if parallel.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=f"rank {parallel.rank()}: %(levelname)s %(name)s: %(message)s")
    with (Path(folder) / DATA_FILE).open("rb") as handle:
        data = pickle.load(handle)
    client = RelayClient(os.environ[ADDRESS_VARIABLE], os.environ[KEY_VARIABLE]) if parallel.is_main() else None
    try:
        train_rank(spec, data, Path(workdir), client, send_results=False)
    finally:
        parallel.leave()
    return 0


class _NoCheckpoints:
    """A rank other than 0 neither reads nor writes checkpoints (rank 0 hands it the newest)."""

    def save(self, step: int, payload: bytes) -> str:
        raise AssertionError("only rank 0 saves checkpoints")

    def load_latest(self) -> tuple[int, bytes] | None:
        raise AssertionError("only rank 0 reads checkpoints")


if __name__ == "__main__":
    parallel.end_rank(main(*sys.argv[1:3]))
