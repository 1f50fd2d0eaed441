"""The IVF index over the centroids (Lite, large collections): same pages as a scan, exact scores, kept on disk."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import normalized

from colpali_milvus.candidates import IVF_MIN_ROWS, CentroidIndex
from colpali_milvus.retriever import MilvusColbertRetriever
from colpali_milvus.store import close_client, open_client

N_PAGES, N_VECTORS = 320, 200   # 320 blocks of 128 centroids: past IVF_MIN_ROWS


def corpus(seed=0):
    "Pages showing words of a shared vocabulary (noisy copies, as patches are), and queries made of one page's words."
    rng = np.random.default_rng(seed)
    words = normalized(rng.standard_normal((2000, 128)))
    shown = [rng.choice(len(words), 40, replace=False) for _ in range(N_PAGES)]
    pages = [normalized(words[rng.choice(s, N_VECTORS)] + 0.04 * rng.standard_normal((N_VECTORS, 128)))
             for s in shown]
    queries = [normalized(words[rng.choice(shown[t], 12)] + 0.06 * rng.standard_normal((12, 128)))
               for t in rng.choice(N_PAGES, 8, replace=False)]
    return pages, queries


def exact(q, pages):
    return np.array([(q @ p.T).max(1).sum() for p in pages])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pages, queries = corpus()
    db = str(tmp_path_factory.mktemp("ivf") / "m.db")
    r = MilvusColbertRetriever(open_client(db), "c", exhaustive_rows=0, centroid_index=True)
    r.create_collection()
    for s in range(0, N_PAGES, 64): r.add_pages(list(range(s, min(s + 64, N_PAGES))), pages[s:s + 64])
    return r, db, pages, queries


def test_the_index_finds_the_pages_a_scan_finds_with_exact_scores(built):
    r, _, pages, queries = built
    assert N_PAGES * 128 >= IVF_MIN_ROWS and r.index.index is not None and r.index.index.ntotal == N_PAGES * 128
    assert r.files.paths["ivf"].exists()
    scan = MilvusColbertRetriever(r.client, "c", exhaustive_rows=0, centroid_index=False)
    assert scan.index is None
    overlap = []
    for q in queries:
        got, want = r.search_pages(q, 10), scan.search_pages(q, 10)
        truth = np.argsort(-exact(q, pages), kind="stable")[:10]
        assert got[0][1]["page_id"] == truth[0]
        np.testing.assert_allclose([s for s, _ in got], exact(q, [pages[row["page_id"]] for _, row in got]), rtol=1e-4)
        overlap.append(len({row["page_id"] for _, row in got} & {row["page_id"] for _, row in want}) / 10)
    assert np.mean(overlap) >= 0.9


def test_a_new_process_reads_the_index_and_adds_what_its_file_lacks(built):
    r, db, pages, queries = built
    assert r.index.saved == N_PAGES * 128   # the writer wrote it whole
    close_client(r.client, db)
    written = r.files.paths["ivf"].stat().st_mtime_ns
    np.save(r.files.folder / "q.npy", queries[0])
    code = textwrap.dedent(f"""
        import numpy as np
        from colpali_milvus.retriever import MilvusColbertRetriever
        from colpali_milvus.store import open_client
        r = MilvusColbertRetriever(open_client({db!r}), "c", exhaustive_rows=0, centroid_index=True)
        q = np.load({str(r.files.folder / "q.npy")!r})
        best = r.search_pages(q, 3)
        print(r.index.index.ntotal, r.index.saved, best[0][1]["page_id"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "WARNING" not in out.stderr, out.stderr
    ntotal, saved, best = map(int, out.stdout.split())
    assert ntotal == saved == N_PAGES * 128
    assert r.files.paths["ivf"].stat().st_mtime_ns == written   # read, not made again
    assert best == int(np.argmax(exact(queries[0], pages)))


def test_replaced_and_deleted_pages_are_not_returned_from_the_index(tmp_path):
    pages, queries = corpus(1)
    r = MilvusColbertRetriever(open_client(str(tmp_path / "m.db")), "c", exhaustive_rows=0, centroid_index=True)
    r.create_collection()
    r.add_pages(list(range(N_PAGES)), pages)
    target = int(np.argmax(exact(queries[0], pages)))
    r.add_pages([target], [pages[(target + 1) % N_PAGES]])   # its old block stays in the index
    r.add_pages([10_000], [pages[target]])
    assert r.index.index.ntotal == (N_PAGES + 2) * 128
    (score, row), *_ = r.search_pages(queries[0], 1)
    assert row["page_id"] == 10_000
    np.testing.assert_allclose(score, exact(queries[0], [pages[target]])[0], rtol=1e-4)
    r.delete_pages([10_000])
    assert 10_000 not in {row["page_id"] for _, row in r.search_pages(queries[0], 10)}


def test_an_unreadable_index_file_is_made_again_quietly(tmp_path, capfd):
    pages, queries = corpus(2)
    r = MilvusColbertRetriever(open_client(str(tmp_path / "m.db")), "c", exhaustive_rows=0, centroid_index=True)
    r.create_collection()
    r.add_pages(list(range(N_PAGES)), pages)
    r.files.paths["ivf"].write_bytes(b"not an index")
    fresh = CentroidIndex(r.files)
    assert fresh.sync() and fresh.index.ntotal == N_PAGES * 128 and fresh.saved == N_PAGES * 128
    assert capfd.readouterr().err == ""
