"""End to end: the sample PDF through ColPaliIndex and the CLI, with the tiny model and Milvus Lite in a temp dir."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from colpali_milvus.core import CollectionNotFoundError, ModelUnavailableError, PDFError
from colpali_milvus.index import ColPaliIndex, page_id_for
from colpali_milvus.maxsim import maxsim

CLI = [str(Path(sys.executable).parent / "colpali-milvus")]  # the installed console script




@pytest.fixture
def index(tmp_path, tiny_model_dir, encoder):
    return ColPaliIndex(tmp_path / "i.db", model=str(tiny_model_dir), encoder=encoder, pages_dir=tmp_path / "pages")


def test_add_and_search_sample(index, sample_pdf, encoder, tmp_path):
    added = index.add(sample_pdf, progress=False)
    assert [r.page for r in added] == [1, 2, 3, 4, 5, 6]
    assert len(index) == 6 and index.sources() == {str(sample_pdf.resolve()): 6}
    q = "Where is ColBERT performance table?"
    res = index.search(q, k=6)
    assert [r.rank for r in res] == [1, 2, 3, 4, 5, 6]
    assert sorted(r.page for r in res) == [1, 2, 3, 4, 5, 6]
    assert all(Path(r.image_path).is_file() and Path(r.image_path).is_relative_to(tmp_path / "pages") for r in res)
    # scores are exact MaxSim of the query against every vector of each page, recomputed from scratch
    qv = encoder.encode_queries([q])[0]
    pv = encoder.encode_images([r.image_path for r in res], progress=False)
    np.testing.assert_allclose([r.score for r in res], maxsim(qv, pv), rtol=1e-4)
    assert index.info()["model"] == index.model and index.info()["pages"] == 6
    # a batch of queries gives one list per query
    both = index.search([q, "end-to-end retrieval"], k=2)
    assert len(both) == 2 and all(len(r) == 2 for r in both)
    # a query encoded beforehand ranks the same
    assert [(r.page_id, r.score) for r in index.search_vectors(qv, k=6)] == [(r.page_id, r.score) for r in res]
    assert [d.source for d in index.search_vectors(qv, k=1, documents=True)] == [str(sample_pdf.resolve())]


def test_readd_is_noop_and_changed_file_replaces(index, sample_pdf, tmp_path):
    pdf = tmp_path / "doc.pdf"
    shutil.copy(sample_pdf, pdf)
    assert len(index.add(pdf, progress=False)) == 6
    assert index.add(pdf, progress=False) == []
    # the file changes and loses pages: its old pages are replaced and the extra ones removed
    from pypdf import PdfReader, PdfWriter
    w = PdfWriter()
    for p in PdfReader(sample_pdf).pages[:2]: w.add_page(p)
    w.write(pdf)
    assert [r.page for r in index.add(pdf, progress=False)] == [1, 2]
    assert index.sources() == {str(pdf.resolve()): 2}
    assert sorted(index.retriever.all_page_ids()) == sorted(page_id_for(str(pdf.resolve()), p) for p in (1, 2))
    # the old version's page images (their folder is named by the old content hash) are deleted with it
    on_disk = sorted(str(p) for p in index.pages_dir.rglob("*.png"))
    assert on_disk == sorted(r["image_path"] for r in index.retriever.all_page_rows(("page_id", "image_path")))
    assert len(on_disk) == 2


def test_bad_inputs(index, tmp_path, sample_pdf):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(sample_pdf.read_bytes()[:2000])
    with pytest.raises(PDFError, match="bad.pdf"):
        index.add(bad, progress=False)
    with pytest.warns(UserWarning, match="bad.pdf"):
        added = index.add([bad, sample_pdf], on_error="skip", progress=False)
    assert len(added) == 6
    with pytest.raises(CollectionNotFoundError, match="add documents first"):
        ColPaliIndex(tmp_path / "i.db", collection="missing", encoder=index.encoder).search("x")
    with pytest.raises(ValueError, match="was built with model"):
        ColPaliIndex(tmp_path / "i.db", model="vidore/colqwen2-v1.0")


def test_offline_model_fails_fast(tmp_path, sample_pdf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    idx = ColPaliIndex(tmp_path / "o.db", model="someone/not-a-cached-model")
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="download"):
        idx.add(sample_pdf, progress=False)
    assert time.perf_counter() - t < 15


def run(*args, env=None, timeout=300):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def test_cli_index_search_info(tmp_path, tiny_model_dir, sample_pdf):
    db = tmp_path / "cli.db"
    out = run("index", sample_pdf, "--db", db, "--model", tiny_model_dir, "--pages-dir", tmp_path / "pg")
    assert out.returncode == 0, out.stderr
    assert "Encoded 6 new pages; 6 pages" in out.stdout
    # search in a new process uses the model recorded in the collection
    out = run("search", "Where is ColBERT performance table?", "--db", db, "-k", "3", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)[0]
    assert res["query"] == "Where is ColBERT performance table?"
    assert [r["rank"] for r in res["results"]] == [1, 2, 3]
    assert {r["source"] for r in res["results"]} == {str(sample_pdf.resolve())}
    table = run("search", "end-to-end retrieval", "--db", db, "-k", "2")
    assert table.returncode == 0 and table.stdout.splitlines()[1].split() == ["rank", "score", "page", "source"]
    assert len(table.stdout.strip().splitlines()) == 4
    info = json.loads(run("info", "--db", db).stdout)
    assert info["pages"] == 6 and info["model"] == str(tiny_model_dir)


def test_cli_errors_are_clear(tmp_path, tiny_model_dir):
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(os.urandom(3000))
    out = run("index", junk, "--db", tmp_path / "e.db", "--model", tiny_model_dir)
    assert out.returncode == 2 and "junk.pdf" in out.stderr and "Traceback" not in out.stderr
    out = run("search", "q", "--db", tmp_path / "e2.db")
    assert out.returncode == 2 and "add documents first" in out.stderr


def test_cli_demo_offline(tmp_path):
    out = run("demo", "--db", tmp_path / "demo.db", env={"COLPALI_MILVUS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert "TINY RANDOM MODEL" in out.stdout and "meaningless" in out.stdout
    assert out.stdout.count("Query: ") == 2 and "Indexed sample.pdf: 6 pages" in out.stdout
