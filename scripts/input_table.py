"""Issue 12's table of broken inputs, reproduced through the real ``mmkd`` command: each case and the
one line it prints now (docs/inputs.md). The tests in tests/cli/test_table_*.py hold the same cases.

    .venv/bin/python scripts/input_table.py
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

W = Path(tempfile.mkdtemp(prefix="mmkd-input-table-"))
MMKD = str(Path(sys.executable).with_name("mmkd"))


def run(*args):
    r = subprocess.run(
        [MMKD, *map(str, args)], capture_output=True, text=True, cwd=W, env={**os.environ, "COLUMNS": "200"}
    )
    err = [line for line in r.stderr.splitlines() if line.strip()]
    return r.returncode, err


GOOD = (
    "name: t\ndataset: {uri: %s, primary: [a], auxiliary: [b]}\nmethod: {name: student_only}\n"
    "train: {epochs: 2, batch_size: 16}\nmodel: {hidden_dim: 8, repr_dim: 4}\n"
)


def spec(name, text):
    p = W / name
    p.write_text(text)
    return p


def data(name, **arrays):
    p = W / name
    np.savez(p, **arrays)
    return p


rng = np.random.default_rng(0)
n = 60
ok = dict(a=rng.normal(size=(n, 3)).astype("f4"), b=rng.normal(size=(n, 2)).astype("f4"), label=np.arange(n) % 3)
good = data("good.npz", **ok)
rows = []


def row(case, code_err):
    code, err = code_err
    rows.append((case, code, err))


bm = (
    "name: t\ndataset: {name: basic_motions, primary: [accelerometer], auxiliary: [gyroscope]}\n"
    "method: {name: student_only}\n"
)
row("YAML syntax error (train)", run("train", spec("s1.yaml", bm + "train: {epochs: 2\n"), "--out", "r1"))
row("YAML syntax error (jobs submit)", run("jobs", "submit", W / "s1.yaml", "--url", "http://127.0.0.1:9"))
row(
    "!!python tag",
    run("train", spec("s2.yaml", bm + "train: !!python/object/apply:os.system ['touch pwned']\n"), "--out", "r2"),
)
row("epochs: true", run("train", spec("s3.yaml", bm + "train: {epochs: true}\n"), "--out", "r3"))
row("duplicate keys", run("train", spec("s4.yaml", bm + "train:\n  epochs: 1\n  epochs: 2\n"), "--out", "r4"))
row("empty spec file", run("train", spec("s5.yaml", ""), "--out", "r5"))
p = W / "trunc.npz"
p.write_bytes(good.read_bytes()[:300])
row("truncated .npz", run("train", spec("d1.yaml", GOOD % p), "--out", "d1"))
row("0-d label", run("train", spec("d2.yaml", GOOD % data("d2.npz", **{**ok, "label": np.array(3)})), "--out", "d2"))
row(
    "(N, 0) modality",
    run("train", spec("d3.yaml", GOOD % data("d3.npz", **{**ok, "a": np.zeros((n, 0), "f4")})), "--out", "d3"),
)
row(
    "(N, C, 0) sequence",
    run("train", spec("d4.yaml", GOOD % data("d4.npz", **{**ok, "a": np.zeros((n, 2, 0), "f4")})), "--out", "d4"),
)
big = ok["label"].copy()
big[0] = 2_000_000_000
row("label 2e9", run("train", spec("d5.yaml", GOOD % data("d5.npz", **{**ok, "label": big})), "--out", "d5"))
row(
    "single class",
    run("train", spec("d6.yaml", GOOD % data("d6.npz", **{**ok, "label": np.zeros(n, int)})), "--out", "d6"),
)
# a real student for predict rows
code, err = run("train", spec("g.yaml", GOOD % good), "--out", "run")
assert code == 0, err
row(
    "predict 1e300 float64",
    run("predict", W / "run/student", data("p1.npz", a=np.full((4, 3), 1e300)), "--out", "p1.npz"),
)
row("predict 0 samples", run("predict", W / "run/student", data("p2.npz", a=np.zeros((0, 3), "f4")), "--out", "p2.npz"))
shutil.copytree(W / "run/student", W / "s_missing")
(W / "s_missing/student.pt2").unlink()
row("predict missing student.pt2", run("predict", W / "s_missing", data("p3.npz", a=ok["a"]), "--out", "p3.npz"))
shutil.copytree(W / "run/student", W / "s_corrupt")
(W / "s_corrupt/student.pt2").write_bytes(b"PK\x03\x04garbage")
row("predict corrupt student.pt2", run("predict", W / "s_corrupt", W / "p3.npz", "--out", "p4.npz"))
shutil.copytree(W / "run/student", W / "s_json")
(W / "s_json/model.json").write_text("{not json")
row("predict bad model.json", run("predict", W / "s_json", W / "p3.npz", "--out", "p5.npz"))
(W / "ro").mkdir()
(W / "ro/f").write_text("x")
row("predict unwritable --out", run("predict", W / "run/student", W / "p3.npz", "--out", W / "ro/f/out.npz"))
code, err = run("predict", W / "run/student", W / "p3.npz", "--out", "X")
rows.append(("predict --out X", code, [*err, f"files: {sorted(p.name for p in W.glob('X*'))}"]))
row("--resume with nothing", run("train", W / "g.yaml", "--out", "nothing", "--resume"))
rows.append(
    (
        "any data error: files left",
        0,
        [f"{sorted(p.name for p in W.iterdir() if p.name.startswith(('d', 'r')) and p.is_dir())}"],
    )
)
s = socket.create_server(("127.0.0.1", 0))
port = s.getsockname()[1]
row("mmkd up on a busy port", run("up", "--port", port, "--home", W / "home"))
for case, code, err in rows:
    print(f"{case} | exit {code} | {' / '.join(err)}")
print(f"(files under {W})")
