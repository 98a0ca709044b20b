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
    with pytest.raises(DataError, match=re.escape(NOT_ALLOWED)):
        opener("dataset:1/")


def test_a_sharded_upload_opens_only_as_its_own_folder_for_its_owner(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """``dataset:<id>`` of a sharded upload becomes the folder ``dataset:<id>/``, which only the job's own
    opener opens (pickled, as ranks get it), for the owner; it prepares and streams like any folder."""
    import pickle

    import numpy as np

    from core.data.prepare import prepare
    from core.data.shards import write_shards
    from core.spec import DatasetSpec
    from worker.data import job_dataset

    settings = WorkerSettings(storage_url=str(tmp_path / "store"), data_allow=[str(tmp_path)])
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(40, 3)), "b": rng.normal(size=(40, 2)), "label": np.arange(40) % 2}
    write_shards(arrays, tmp_path / "store" / "datasets" / "1" / "abc", rows_per_shard=16)
    with sessions() as session:
        owner, other = Owner(name="alice"), Owner(name="bob")
        session.add_all([owner, other])
        session.flush()
        row = Dataset(owner_id=owner.id, name="d", key="datasets/1/abc/", size_bytes=1, sha256="0" * 64, n_samples=40)
        row.summary = {"modalities": {}, "label": None, "splits": None}
        session.add(row)
        session.commit()
        owner_id, other_id, dataset_id = owner.id, other.id, row.id
    spec = DatasetSpec(id=dataset_id, primary=["a"], auxiliary=["b"])
    resolved, opener = job_dataset(settings, sessions, spec, owner_id=owner_id)
    assert (resolved.id, resolved.uri) == (None, f"dataset:{dataset_id}/")
    opener = pickle.loads(pickle.dumps(opener))
    assert opener(f"dataset:{dataset_id}/").list_top(10) == ["part-00000.npz", "part-00001.npz", "part-00002.npz"]
    for uri in (f"dataset:{dataset_id + 1}/", f"{tmp_path}/store/datasets/1/abc/", f"dataset:{dataset_id}"):
        with pytest.raises(DataError, match=re.escape(NOT_ALLOWED)):
            opener(uri)
    data = prepare(resolved, "classification", open_shards=opener)
    assert data.info["source"] == f"dataset:{dataset_id}/" and data.info["shards"]["files"] == 3
    assert sum(data.info["sizes"].values()) == 40
    theirs, _ = job_dataset(settings, sessions, spec, owner_id=other_id)  # another owner's: read as one file,
    assert theirs == spec  # which job_reader refuses as no dataset of theirs
