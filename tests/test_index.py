"""`siglip-runtime index` / `search`: sources, shards and resume, unreadable images, the vector
store, the model check, and the Ray path against the local one, image for image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.make_collection import make_collection
from runtime import ImageEncoder
from runtime.__main__ import main
from runtime.index.build import IndexOptions, build_index
from runtime.index.search import ImageIndex
from runtime.index.shards import finished_shard, read_shard, shard_name
from runtime.index.sources import list_images

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))

pytest.importorskip("faiss", reason="the [index] extra (FAISS) is not installed")


def _photo_collection(directory: Path) -> Path:
    """The packaged photos, one nested copy, and three files that are not readable images."""
    (directory / "nested" / ".hidden").mkdir(parents=True)
    for photo in PHOTOS:
        (directory / photo.name).write_bytes(photo.read_bytes())
    (directory / "nested" / "cat-copy.JPG").write_bytes(PHOTOS[[p.stem for p in PHOTOS].index("cat")].read_bytes())
    (directory / "nested" / "empty.jpg").write_bytes(b"")
    (directory / "nested" / "text.png").write_text("not an image")
    (directory / "nested" / "truncated.jpg").write_bytes(PHOTOS[0].read_bytes()[:2000])
    (directory / "nested" / ".hidden" / "skip.jpg").write_bytes(PHOTOS[0].read_bytes())
    (directory / "nested" / "notes.txt").write_text("skipped: not an image suffix")
    return directory


@pytest.fixture(scope="module")
def photo_index(text_artefacts, tmp_path_factory):
    base = tmp_path_factory.mktemp("photo_index")
    source = _photo_collection(base / "photos")
    info = build_index(source, text_artefacts[0], base / "index", IndexOptions(shard_size=4, batch_size=3), emit=None)
    return base / "index", source, info


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated collection of 2000 small images and 6 corrupt files."""
    directory = tmp_path_factory.mktemp("generated")
    make_collection(directory, 2000, min_side=40, max_side=120, corrupt=6)
    return directory


def _shards(index: Path) -> list[dict]:
    count = json.loads((index / "index.json").read_text())["shards"]
    return [read_shard(index / "shards", n) for n in range(count)]


def _assert_same_shards(a: Path, b: Path, atol: float = 1e-6) -> None:
    left, right = _shards(a), _shards(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        assert x["paths"].tolist() == y["paths"].tolist()
        assert x["failed_paths"].tolist() == y["failed_paths"].tolist()
        np.testing.assert_allclose(x["embeddings"], y["embeddings"], atol=atol, rtol=0)


def _run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


# --- sources -------------------------------------------------------------------------------------

def test_directory_source_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    source = _photo_collection(tmp_path / "photos")
    paths = list_images(source)
    names = [Path(p).relative_to(source.absolute()).as_posix() for p in paths]
    assert names == sorted(names) and all(Path(p).is_absolute() for p in paths)
    assert "nested/cat-copy.JPG" in names and "nested/text.png" in names
    assert not any(".hidden" in n or n.endswith(".txt") for n in names)
    assert len(names) == len(PHOTOS) + 4


def test_list_csv_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "list.txt").write_text(f"# photos\n{PHOTOS[1]}\n\nrel/b.jpg\n{PHOTOS[1]}\n")
    assert list_images(tmp_path / "list.txt") == [str(PHOTOS[1]), str(tmp_path / "rel" / "b.jpg")]
    (tmp_path / "t.csv").write_text(f"id,file\n1,{PHOTOS[0]}\n2,x.jpg\n")
    assert list_images(tmp_path / "t.csv", "file") == [str(PHOTOS[0]), str(tmp_path / "x.jpg")]
    pq.write_table(pa.table({"path": [str(PHOTOS[2]), "y.png"], "label": ["a", "b"]}), tmp_path / "t.parquet")
    assert list_images(tmp_path / "t.parquet") == [str(PHOTOS[2]), str(tmp_path / "y.png")]


@pytest.mark.parametrize("case, message", [
    ("missing", "source not found"),
    ("empty-dir", "lists no image files"),
    ("no-column", "has no column 'file' (it has: id, path)"),
    ("column-on-dir", "--column applies to a CSV or Parquet source"),
])
def test_bad_sources_fail_in_one_line(tmp_path, text_artefacts, capsys, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.csv").write_text("id,path\n1,a.jpg\n")
    source, extra = {"missing": ("nope", []), "empty-dir": ("empty", []), "no-column": ("t.csv", ["--column", "file"]),
                     "column-on-dir": ("empty", ["--column", "path"])}[case]
    status = main(["index", str(tmp_path / source), "--artefacts", str(text_artefacts[0]),
                   "--output", str(tmp_path / "index"), *extra])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "index").exists()


# --- index and search on the photos ----------------------------------------------------------------

def test_index_embeds_every_readable_image_and_lists_the_rest(photo_index, text_artefacts):
    index, source, info = photo_index
    assert info["complete"] and info["indexed"] == len(PHOTOS) + 1 and info["failed"] == 3
    failures = json.loads((index / "failures.json").read_text())
    assert sorted(Path(f["path"]).name for f in failures) == ["empty.jpg", "text.png", "truncated.jpg"]
    assert all(f["reason"] for f in failures)
    paths = [p for shard in _shards(index) for p in shard["paths"].tolist()]
    vectors = np.concatenate([shard["embeddings"] for shard in _shards(index)])
    expected = ImageEncoder(text_artefacts[0], provider="cpu").embed(paths, normalize=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)
    for n in range(info["shards"]):  # every shard committed with its file's sha256
        assert finished_shard(index / "shards", n) is not None


def test_search_by_image_and_by_text_matches_exact_search(photo_index, text_artefacts):
    index, source, _ = photo_index
    searcher = ImageIndex(index)
    paths = [p for shard in _shards(index) for p in shard["paths"].tolist()]
    vectors = np.concatenate([shard["embeddings"] for shard in _shards(index)])
    cat = str(source / "cat.jpg")
    hits = searcher.search_image(cat, k=3)
    assert {hits[0]["path"], hits[1]["path"]} == {str((source / "cat.jpg").absolute()),
                                                    str((source / "nested" / "cat-copy.JPG").absolute())}
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    from runtime import TextEncoder

    query = TextEncoder(text_artefacts[0], provider="cpu").embed(["a photo of a cat"], normalize=True)[0]
    found = searcher.search_text("a photo of a cat", k=5)
    order = np.argsort(-(vectors @ query))[:5]
    assert [r["path"] for r in found] == [paths[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in found], (vectors @ query)[order], atol=1e-5)
    assert all(0.0 < r["probability"] < 1.0 for r in found)
    assert len(searcher.search_image(cat, k=100)) == len(paths)


def test_search_cli_text_and_image(photo_index, capsys):
    index, source, _ = photo_index
    assert main(["search", str(index), "--top-k", "2", "a red car", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2] and {"path", "score", "probability"} <= set(rows[0])
    assert main(["search", str(index), "--image", str(source / "rocket.jpg"), "--top-k", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith("rocket.jpg")


def test_search_refuses_another_model_in_one_line(photo_index, tiny_artefacts, capsys):
    index = photo_index[0]
    status = main(["search", str(index), "a cat", "--artefacts", str(tiny_artefacts[0])])
    err = capsys.readouterr().err
    assert status == 2 and "is not the model that built" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["search", "{tmp}", "cat"], "not an index"),
    (["search", "{index}"], "takes a text query or --image FILE"),
    (["search", "{index}", "cat", "--image", "x.jpg"], "takes a text query or --image FILE"),
    (["search", "{index}", "--image", "{tmp}/missing.jpg"], "image not found"),
    (["search", "{index}", "--top-k", "0", "cat"], "expected a positive integer"),
])
def test_search_bad_input_fails_in_one_line(photo_index, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, index=photo_index[0]) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit:  # a usage error, from argparse
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_text_search_needs_a_text_tower(tmp_path, tiny_artefacts, capsys):
    from siglip_export.pipeline import ExportOptions, run_export

    run_export(ExportOptions(checkpoint=tiny_artefacts[0] / "../ckpt", output_dir=tmp_path / "art", towers=("vision",)),
               emit=None)
    build_index(PHOTOS[0].parent, tmp_path / "art", tmp_path / "index", emit=None)
    assert main(["search", str(tmp_path / "index"), "--image", str(PHOTOS[0]), "--top-k", "1"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), "a cat"]) == 2
    assert "has no text tower" in capsys.readouterr().err


def test_index_refuses_to_mix_models_sources_or_shard_sizes(photo_index, tiny_artefacts, text_artefacts, tmp_path):
    from runtime.errors import UserError

    index, source, _ = photo_index
    with pytest.raises(UserError, match="was started with another model"):
        build_index(source, tiny_artefacts[0], index, IndexOptions(shard_size=4), emit=None)
    with pytest.raises(UserError, match="another list of images"):
        build_index(PHOTOS[0].parent, text_artefacts[0], index, IndexOptions(shard_size=4), emit=None)
    with pytest.raises(UserError, match="--shard-size 4"):
        build_index(source, text_artefacts[0], index, IndexOptions(shard_size=5), emit=None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="non-empty directory that is not an index"):
        build_index(source, text_artefacts[0], tmp_path / "full", emit=None)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


# --- resume: after a kill, and over a shard that looks finished but is not --------------------------

def test_resume_after_kill_equals_an_uninterrupted_run(generated, tiny_artefacts, tmp_path):
    artefacts = str(tiny_artefacts[0])
    whole = tmp_path / "whole"
    build_index(generated, artefacts, whole, IndexOptions(shard_size=50, batch_size=16), emit=None)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "index", str(generated), "--artefacts", artefacts,
                             "--output", str(killed), "--shard-size", "50", "--batch-size", "16", "--workers", "1"],
                            cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "shards" / f"{shard_name(1)}.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "index.json").read_text())
    records = sorted((killed / "shards").glob("shard-*.json"))
    assert not state["complete"] and 2 <= len(records) < state["shards"], "the kill came too late to test resume"
    for record in records:  # every committed shard is whole
        assert finished_shard(killed / "shards", int(record.stem.split("-")[1])) is not None
    # a shard that looks finished but is not: its file changed after the commit record
    victim = killed / "shards" / f"{shard_name(0)}.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    done = len(records) - 1
    result = _run_cli("index", str(generated), "--artefacts", artefacts, "--output", str(killed), "--shard-size", "50",
                      "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    assert f"{done} finished shards kept" in result.stderr
    _assert_same_shards(whole, killed)
    state = json.loads((killed / "index.json").read_text())
    assert state["complete"] and state["indexed"] == 2000 and state["failed"] == 6
    assert not list((killed / "shards").glob(".*tmp*"))
    hits = ImageIndex(killed).search_image(str(sorted(generated.rglob("000003.jpg"))[0]), k=1)
    assert hits[0]["path"].endswith("000003.jpg")


# --- Ray -----------------------------------------------------------------------------------------------

def test_ray_run_equals_the_local_run_image_for_image(generated, tiny_artefacts, tmp_path):
    pytest.importorskip("ray.data", reason="Ray Data (the [index] extra) is not installed")
    artefacts = str(tiny_artefacts[0])
    local = tmp_path / "local"
    build_index(generated, artefacts, local, IndexOptions(shard_size=500, batch_size=32), emit=None)
    result = _run_cli("index", str(generated), "--artefacts", artefacts, "--output", str(tmp_path / "ray"),
                      "--shard-size", "500", "--batch-size", "32", "--ray", "--ray-actors", "2",
                      env={**os.environ, "RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 encoder actors" in result.stderr
    _assert_same_shards(local, tmp_path / "ray", atol=1e-5)
    local_info = json.loads((local / "index.json").read_text())
    ray_info = json.loads((tmp_path / "ray" / "index.json").read_text())
    assert (ray_info["indexed"], ray_info["failed"]) == (local_info["indexed"], local_info["failed"]) == (2000, 6)
    assert ray_info["last_run"]["ray"] == "local"
    # the two runs write the same index, so either resumes the other's
    for name in ("shard-00001.npz", "shard-00003.json"):
        (tmp_path / "ray" / "shards" / name).unlink()
    info = build_index(generated, artefacts, tmp_path / "ray", IndexOptions(shard_size=500, batch_size=32),
                       emit=None)
    assert info["complete"] and info["last_run"]["ray"] is None
    _assert_same_shards(local, tmp_path / "ray", atol=1e-5)


def test_large_collections_get_an_hnsw_store_that_finds_the_exact_neighbours(tmp_path, monkeypatch):
    """Above EXACT_ROWS the store is FAISS HNSW; on clustered vectors its top 10 agree with exact search."""
    from benchmarks.vector_store import collection, exact_top
    from runtime.index import store as vector_store

    monkeypatch.setattr(vector_store, "EXACT_ROWS", 100)
    data, query = collection(3000, 64, 20, seed=1)
    names = np.array([f"img-{i}.jpg" for i in range(len(data))])
    shards = [(names[i:i + 1000], data[i:i + 1000]) for i in range(0, len(data), 1000)]
    info = vector_store.build_store(tmp_path, iter(shards), len(data), 64)
    assert info["kind"].startswith("IndexHNSWFlat") and info["rows"] == 3000
    store = vector_store.Store(tmp_path)
    assert hasattr(store.index, "hnsw")
    truth = exact_top(data, query, 10)
    found = [[int(p[4:-4]) for p, _ in store.search(q, 10)] for q in query]
    recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95, recall
