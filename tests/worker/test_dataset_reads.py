"""The worker reads ``dataset:<id>`` only for the job's owner, checks the size before reading and the
checksum after, and refuses raw URIs outside the allow-list or inside the service's own store."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.errors import DataError
from jobs.models import Dataset, Owner
from storage.store import LocalStore
from worker.config import WorkerSettings
from worker.data import FILE_MISSING, NO_DATASET, NOT_ALLOWED, job_reader, read_uploaded

PAYLOAD = b"PK" + b"npz bytes" * 100


def _owners_dataset(sessions: sessionmaker[Session], store: LocalStore) -> tuple[int, int, int]:
    """Two owners; the first has one dataset. Returns (owner, other owner, dataset id)."""
    with sessions() as session:
        owner, other = Owner(name="alice"), Owner(name="bob")
        session.add_all([owner, other])
        session.flush()
        dataset = Dataset(
            owner_id=owner.id,
            name="d",
            key=f"datasets/{owner.id}/1.npz",
            size_bytes=len(PAYLOAD),
            sha256=hashlib.sha256(PAYLOAD).hexdigest(),
            n_samples=10,
            summary={"modalities": {}, "label": None, "splits": None},
        )
        session.add(dataset)
        session.commit()
        store.put_bytes(dataset.key, PAYLOAD)
        return owner.id, other.id, dataset.id


def test_only_the_owner_reads_an_uploaded_dataset(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    owner, other, dataset_id = _owners_dataset(sessions, store)
    ref = f"dataset:{dataset_id}"
    assert read_uploaded(store, sessions, ref, owner_id=owner, max_bytes=None) == PAYLOAD
    refusals = []
    for candidate, owner_id in [(ref, other), (f"dataset:{dataset_id + 7}", owner), ("dataset:x", owner)]:
        with pytest.raises(DataError) as caught:
            read_uploaded(store, sessions, candidate, owner_id=owner_id, max_bytes=None)
        refusals.append(str(caught.value).removeprefix(candidate))
    assert refusals == [f": {NO_DATASET}"] * 3
    with pytest.raises(DataError, match="over the limit of 100 bytes"):
        read_uploaded(store, sessions, ref, owner_id=owner, max_bytes=100)
    store.put_bytes(f"datasets/{owner}/1.npz", PAYLOAD + b"changed")
    with pytest.raises(DataError, match="does not match the checksum"):
        read_uploaded(store, sessions, ref, owner_id=owner, max_bytes=None)
    store.delete([f"datasets/{owner}/1.npz"])
    with pytest.raises(DataError, match=re.escape(FILE_MISSING)):
        read_uploaded(store, sessions, ref, owner_id=owner, max_bytes=None)
    with sessions() as session:  # deleted since submit
        session.delete(session.get(Dataset, dataset_id))
        session.commit()
    with pytest.raises(DataError, match=re.escape(NO_DATASET)):
        read_uploaded(store, sessions, ref, owner_id=owner, max_bytes=None)


def test_raw_uris_inside_the_services_store_are_refused_even_when_allowed(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    owner, _, _ = _owners_dataset(sessions, store)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "d.npz").write_bytes(PAYLOAD)
    settings = WorkerSettings(storage_url=str(tmp_path / "store"), data_allow=[str(tmp_path)])
    read = job_reader(settings, store, sessions, owner_id=owner)
    assert read(str(tmp_path / "shared" / "d.npz"), max_bytes=None) == PAYLOAD
    for uri in (str(tmp_path / "store" / f"datasets/{owner}/1.npz"), str(tmp_path / "store" / "missing.npz")):
        with pytest.raises(DataError) as caught:
            read(uri, max_bytes=None)
        assert str(caught.value) == f"{uri}: {NOT_ALLOWED}"


def test_sharded_folders_open_only_under_the_allow_list_and_never_in_the_services_store(tmp_path: Path) -> None:
    """The same refusal for a folder outside the allow-list, inside the service's store (allowed or not)
    and for an uploaded id; an allowed folder opens, and the opener survives pickling (ranks reopen it)."""
    import pickle

    from worker.data import job_folders

    (tmp_path / "shared" / "clips").mkdir(parents=True)
    (tmp_path / "shared" / "clips" / "part-0.npz").write_bytes(PAYLOAD)
    settings = WorkerSettings(storage_url=str(tmp_path / "store"), data_allow=[str(tmp_path)])
    opener = pickle.loads(pickle.dumps(job_folders(settings)))
    assert opener(f"{tmp_path}/shared/clips/").list_keys("") == ["part-0.npz"]
    above = WorkerSettings(storage_url=str(tmp_path / "store"), data_allow=[str(tmp_path.parent)])
    outside = WorkerSettings(storage_url=str(tmp_path / "store"), data_allow=[str(tmp_path / "shared" / "other")])
    for uri, use in [
        (f"{tmp_path}/shared/clips/", job_folders(outside)),
        (f"{tmp_path}/store/datasets/", opener),
        (f"{tmp_path}/store/", opener),
        (f"{tmp_path}/", job_folders(above)),  # allowed, but it holds the service's store
    ]:
        with pytest.raises(DataError) as caught:
            use(uri)
        assert str(caught.value) == f"{uri}: {NOT_ALLOWED}"
    with pytest.raises(DataError, match="an uploaded dataset is one file"):
        opener("dataset:1")
