"""MilvusColbertRetriever on Milvus Lite: the seed notebook's calls verbatim, exact MaxSim, persistence, bad input."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import unit
from pymilvus import MilvusClient

from colpali_milvus.core import CollectionNotFoundError, DatabaseLockedError, DimensionMismatchError
from colpali_milvus.maxsim import maxsim
from colpali_milvus.retriever import MilvusColbertRetriever
from colpali_milvus.store import close_client, open_client


@pytest.fixture
def pages():
    "Ten ColPali-shaped pages (1030 x 128, unit norm) and two queries built from pages 4 and 7."
    rng = np.random.default_rng(42)
    ds = [unit(rng, 1030) for _ in range(10)]
    qs = [ds[4][:20] + 0.1 * unit(rng, 20), ds[7][100:125] + 0.1 * unit(rng, 25)]
    return ds, [q / np.linalg.norm(q, axis=1, keepdims=True) for q in qs]


def brute(q, ds):
    return np.array([(q @ d.T).max(1).sum() for d in ds])


def test_seed_notebook_code_runs_unchanged(tmp_path, pages, monkeypatch):
    "The seed's cells, verbatim but for importing our class instead of defining theirs."
    ds, qs = pages
    monkeypatch.chdir(tmp_path)
    filepaths = [f"./pages/page_{i + 1}.png" for i in range(len(ds))]
    client = MilvusClient(uri="milvus.db")
    retriever = MilvusColbertRetriever(collection_name="colpali", milvus_client=client)
    retriever.create_collection()
    retriever.create_index()
    for i in range(len(filepaths)):
        data = {"colbert_vecs": ds[i], "doc_id": i, "filepath": filepaths[i]}
        retriever.insert(data)
    retriever.create_scalar_index()
    found = []
    for query in qs:
        result = retriever.search(query, topk=1)
        found.append(filepaths[result[0][1]])
    assert found == ["./pages/page_5.png", "./pages/page_8.png"]
    # every one of the 1030 vectors of a page is stored and read back (the seed's limit=1000 dropped 30)
    back = retriever.page_vectors(retriever.page_rows([4]))[4]
    assert back.shape == (1030, 128)
    np.testing.assert_allclose(back, ds[4], atol=1e-3)


@pytest.mark.parametrize("n_candidates", [256, 3])
def test_scores_are_exact_maxsim_over_all_vectors(tmp_path, pages, n_candidates):
    ds, qs = pages
    r = MilvusColbertRetriever(open_client(str(tmp_path / "m.db")), "c", n_candidates=n_candidates,
                               exhaustive_rows=0)  # the candidate path (small collections are otherwise exhaustive)
    r.create_collection()
    for i, d in enumerate(ds): r.insert({"colbert_vecs": d, "doc_id": i, "filepath": f"p{i}"})
    stored = [d.astype(np.float16).astype(np.float32) for d in ds]  # pages are stored as float16
    for q in qs:
        res = r.search(q, topk=3)
        want = brute(q, ds)
        if n_candidates >= len(ds):  # every page scored: the exact ranking
            assert [d for _, d in res] == list(np.argsort(-want)[:3])
        else:  # the candidate stage is approximate (recall is measured by bench/run.py): the clear winner survives
            assert res[0][1] == np.argmax(want)
        # exact MaxSim over every stored vector, and within float16 rounding of the float32 originals
        np.testing.assert_allclose([s for s, _ in res], [brute(q, [stored[d]])[0] for _, d in res], rtol=1e-5)
        np.testing.assert_allclose([s for s, _ in res], want[[d for _, d in res]], rtol=1e-3)
    # with fewer candidates than pages, the candidate stage keeps n_candidates pages; else it keeps all
    assert len(r.candidates(qs[0])) == min(n_candidates, len(ds))


def test_maxsim_matches_colpali_engine(pages):
    torch = pytest.importorskip("torch")
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor
    ds, qs = pages
    rng = np.random.default_rng(1)
    ds = [d[: rng.integers(500, 1030)] for d in ds]  # ragged pages, as ColQwen's are
    ref = BaseVisualRetrieverProcessor.score_multi_vector([torch.from_numpy(q) for q in qs],
                                                          [torch.from_numpy(d) for d in ds], device="cpu").numpy()
    ours = np.stack([maxsim(q, ds) for q in qs])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    np.testing.assert_allclose(ours, np.stack([brute(q, ds) for q in qs]), atol=1e-4)


def test_reopen_in_new_process(tmp_path, pages):
    ds, qs = pages
    db = tmp_path / "persist.db"
    r = MilvusColbertRetriever(open_client(str(db)), "c")
    r.create_collection()
    for i, d in enumerate(ds[:5]): r.add_page(i, d, source="s.pdf", page=i + 1, image_path=f"/p/{i}.png")
    close_client(r.client, str(db))
    np.save(tmp_path / "q.npy", qs[0])
    code = textwrap.dedent(f"""
        import numpy as np
        from colpali_milvus.retriever import MilvusColbertRetriever
        from colpali_milvus.store import open_client
        r = MilvusColbertRetriever(open_client({str(db)!r}), "c")
        s, row = r.search_pages(np.load({str(tmp_path / 'q.npy')!r}), k=1)[0]
        print(row["page_id"], row["page"], row["image_path"], r.num_pages(), r.dim)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "5", "/p/4.png", "5", "128"]


def test_locked_database_gives_clear_error(tmp_path):
    db = tmp_path / "locked.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pymilvus import MilvusClient
        MilvusClient({str(db)!r}); print('ready', flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DatabaseLockedError, match="another process"):
            open_client(str(db))
        assert not db.with_name("x").exists()  # nothing written beside the database
    finally:
        holder.kill(); holder.wait()


def test_bad_input(tmp_path, pages):
    ds, qs = pages
    r = MilvusColbertRetriever(open_client(str(tmp_path / "b.db")), "c")
    with pytest.raises(CollectionNotFoundError, match="create_collection"):
        r.search(qs[0], 1)
    r.create_collection()
    with pytest.raises(DimensionMismatchError, match="dimension 64, expected 128"):
        r.insert({"colbert_vecs": ds[0][:, :64], "doc_id": 1, "filepath": ""})
    with pytest.raises(DimensionMismatchError):
        r.search(qs[0][:, :64], 1)
    bad = ds[0].copy(); bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r.insert({"colbert_vecs": bad, "doc_id": 1, "filepath": ""})
    with pytest.raises(ValueError, match="doc_id"):
        r.insert({"colbert_vecs": ds[0], "doc_id": -1, "filepath": ""})
    assert r.num_pages() == 0  # nothing half-written
    assert r.search(qs[0], 3) == []


def test_replace_and_delete(tmp_path, pages):
    "A replaced page is read back with its new vectors (appended to the page files), a deleted one is gone."
    ds, qs = pages
    r = MilvusColbertRetriever(open_client(str(tmp_path / "r.db")), "c")
    r.create_collection()
    for i, d in enumerate(ds[:3]): r.add_page(i, d)
    r.search(qs[0], 1)  # fills the small collection's matrix
    size = r.files.nbytes()
    r.add_page(1, ds[1][:10])
    assert r.page_vectors(r.page_rows([1]))[1].shape == (10, 128)
    assert r.files.nbytes() > size   # appended: the old vectors stay until compacted
    assert not r.client.has_collection("c__vectors")   # Lite keeps no blob rows
    assert [d for _, d in r.search(ds[1][:10], 1)] == [1]
    r.delete_pages([0, 2])
    assert r.all_page_ids() == [1]
    assert [d for _, d in r.search(qs[0], 5)] == [1]


@pytest.mark.parametrize("cand_dtype", ["float32", "bfloat16"])
def test_candidate_stage_dtypes_agree_with_centroid_maxsim(tmp_path, pages, cand_dtype):
    """The candidate stage scores each page by MaxSim over its centroids, in float32 or bfloat16; final scores stay
    exact."""
    from colpali_milvus.candidates import LocalCandidates, page_centroids
    from colpali_milvus.maxsim import block_maxsim
    ds, qs = pages
    r = MilvusColbertRetriever(open_client(str(tmp_path / "m.db")), "c", n_candidates=3, exhaustive_rows=0,
                               cand_dtype=cand_dtype)
    r.create_collection()
    r.add_pages(list(range(len(ds))), ds)
    bits, ids = r.files.centroids()
    assert ids.tolist() == list(range(len(ds))) and bits.shape == (len(ds) * r.pool, 128)
    approx = block_maxsim(qs[0], bits, r.pool, cand_dtype)
    want = np.array([(qs[0] @ page_centroids(d, r.pool).T).max(1).sum() for d in ds])
    np.testing.assert_allclose(approx, want, rtol=1e-2, atol=0.2)   # centroids are stored as bfloat16
    slots, found = LocalCandidates(r.files, cand_dtype).search(qs[0], 3)
    assert found[0] == 4 and list(found) == list(np.argsort(-approx, kind="stable")[:3])
    for q, target in zip(qs, (4, 7)):
        (score, row), *_ = r.search_pages(q, k=3)
        assert row["page_id"] == target
        np.testing.assert_allclose(score, brute(q, [ds[target]])[0], rtol=1e-3)   # exact (float16 storage) score


def candidate_stage_on(tmp_path, ds):
    "A Lite retriever holding `ds` that always goes through the candidate stage, keeping 2 candidates."
    r = MilvusColbertRetriever(open_client(str(tmp_path / "m.db")), "c", n_candidates=2, exhaustive_rows=0)
    r.create_collection()
    r.add_pages(list(range(len(ds))), ds)
    return r


def test_restricted_search_uses_only_allowed_pages(tmp_path, pages):
    "page_ids restricts a search: few pages are all scored exactly, many go through the candidate stage among them."
    ds, qs = pages
    r = candidate_stage_on(tmp_path, ds)
    few = [0, 1]
    res = r.search_pages(qs[0], k=10, page_ids=few)
    assert sorted(row["page_id"] for _, row in res) == few   # up to n_candidates pages: all scored exactly
    np.testing.assert_allclose([s for s, _ in res], sorted(brute(qs[0], [ds[i] for i in few]), reverse=True), rtol=1e-3)
    many = [1, 2, 3, 4, 5, 6]
    res = r.search_pages(qs[0], k=10, page_ids=many + [999])   # unknown ids are ignored
    assert len(res) == len(many) and {row["page_id"] for _, row in res} == set(many)   # k > n_candidates: k asked
    assert len(r.search_pages(qs[0], k=2, page_ids=many)) == 2
    assert res[0][1]["page_id"] == 4
    assert r.search_pages(qs[1], k=10, page_ids=[4, 5, 6, 8, 9]) and \
        7 not in {row["page_id"] for _, row in r.search_pages(qs[1], k=10, page_ids=[4, 5, 6, 8, 9])}


def test_old_blocks_of_replaced_and_deleted_pages_are_skipped(tmp_path, pages):
    "Blocks left behind by replaced or deleted pages are still scored but never returned; the search looks further."
    ds, qs = pages
    r = candidate_stage_on(tmp_path, ds)
    r.delete_pages([5])
    for i in (4, 3, 2):   # page 4's content moves to pages 40, then 3 and 2 get it: three stale blocks match qs[0] best
        r.add_pages([i], [ds[9 - i]])
    r.add_pages([40], [ds[4]])
    cands = r.candidates(qs[0])
    assert len(cands) == 2 and 40 in cands and 5 not in cands
    assert all(row["slot"] == r.page_rows([p])[p]["slot"] for p, row in cands.items())
    (score, row), *_ = r.search_pages(qs[0], k=1)
    assert row["page_id"] == 40
    np.testing.assert_allclose(score, brute(qs[0], [ds[4]])[0], rtol=1e-3)
    assert 5 not in {row["page_id"] for _, row in r.search_pages(qs[0], k=10)}


def test_bf16_error_bound_holds():
    """A bfloat16 product is within BF16_ERR * |q| * |d| of the exact one: random vectors of any norm, and the worst
    case."""
    import torch

    from colpali_milvus.maxsim import BF16_ERR
    rng = np.random.default_rng(3)
    d = unit(rng, 5000) * rng.uniform(0.05, 8, (5000, 1)).astype(np.float32)
    q = unit(rng, 32) * rng.uniform(0.1, 3, (32, 1)).astype(np.float32)
    worst = np.full((2, 128), 1 + 2**-8 - 2**-20, np.float32)   # every component rounds down by almost u = 2^-8
    for a, b in ((q, d), (worst, worst)):
        exact = a.astype(np.float64) @ b.astype(np.float64).T
        approx = (torch.from_numpy(a).bfloat16() @ torch.from_numpy(b).bfloat16().T).float().numpy()
        err = np.abs(approx - exact) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None])
        assert 0 < err.max() <= BF16_ERR
    assert err.max() > 1.9 * 2**-8   # the worst case comes close to the bound: it is not loose by orders of magnitude


def test_small_collections_rank_the_same_in_bfloat16_and_float32(tmp_path):
    "The bfloat16 screen of a small collection gives the float32 exhaustive ranking, near ties and odd norms included."
    rng = np.random.default_rng(5)
    base = unit(rng, 200)
    ds = [unit(rng, int(n)) * np.float32(s) for n, s in zip(rng.integers(50, 300, 30), rng.uniform(0.5, 2, 30))]
    ds += [base + 2e-3 * unit(rng, 200) for _ in range(20)]   # 20 pages whose scores differ by less than bf16's error
    qs = [base[:20] + 0.3 * unit(rng, 20), unit(rng, 25), ds[3][:10] + 0.05 * unit(rng, 10)]
    client = open_client(str(tmp_path / "m.db"))
    r16 = MilvusColbertRetriever(client, "c", cand_dtype="bfloat16", n_candidates=64)   # 50 pages: all screened
    r16.create_collection()
    r16.add_pages(list(range(len(ds))), ds)
    r32 = MilvusColbertRetriever(client, "c", cand_dtype="float32", n_candidates=64)
    small = r16.small()
    assert small.matrix.dtype == np.uint16   # screened from bfloat16 bits
    from colpali_milvus.maxsim import rerank
    stats = {}
    rerank(qs[1], small.pages, 5, 'bfloat16', small.matrix, small.norm, stats)
    # few are scored in float32
    assert stats['pages'] < len(ds) and stats['pairs'] < sum(map(len, small.pages)) * len(qs[1])
    # float16-rounded
    stored = {pid: v.astype(np.float64) for pid, v in r16.page_vectors(r16.page_rows(range(len(ds)))).items()}
    for q in qs:
        exact = {pid: (q.astype(np.float64) @ v.T).max(1).sum() for pid, v in stored.items()}
        for k in (1, 5, 12, len(ds)):
            for r in (r16, r32):   # a correct top k: exact scores, best first, and no page left out scores higher
                got = r.search_pages(q, k)
                ids, scores = [row["page_id"] for _, row in got], np.array([s for s, _ in got])
                assert len(ids) == k and len(set(ids)) == k
                np.testing.assert_allclose(scores, [exact[i] for i in ids], rtol=1e-5)
                assert (np.diff(scores) <= 1e-5).all()
                assert max([exact[i] for i in exact if i not in ids], default=-np.inf) <= scores[-1] + 1e-5
            assert ([row["page_id"] for _, row in r16.search_pages(q, 5)][:1]
                    == [row["page_id"] for _, row in r32.search_pages(q, 5)][:1])
    close_client(client, str(tmp_path / "m.db"))


def test_a_small_collection_past_n_candidates_reranks_the_same_candidates_as_the_candidate_stage(tmp_path):
    """On Lite, a small collection with more pages than n_candidates keeps the same pages, with the same scores, as the
    candidate stage."""
    rng = np.random.default_rng(11)
    ds = [unit(rng, int(n)) for n in rng.integers(40, 90, 60)]
    client = open_client(str(tmp_path / "m.db"))
    small = MilvusColbertRetriever(client, "c", n_candidates=12)
    small.create_collection()
    small.add_pages(list(range(len(ds))), ds)
    staged = MilvusColbertRetriever(client, "c", n_candidates=12, exhaustive_rows=0)
    assert small.small() is not None and small.small().centroids is not None and staged.small() is None
    for q in [ds[7][:10] + 0.1 * unit(rng, 10), unit(rng, 16), ds[41][:5]]:
        a, b = small.search_pages(q, 5), staged.search_pages(q, 5)
        assert [r["page_id"] for _, r in a] == [r["page_id"] for _, r in b]
        np.testing.assert_allclose([s for s, _ in a], [s for s, _ in b], rtol=1e-6)
    assert small.search_pages(ds[41][:5], 1)[0][1]["page_id"] == 41


def test_files_of_an_older_version_still_search_exactly(tmp_path, pages):
    """Page files written before the int8 centroid codes and spans existed: searches use the bfloat16 blocks and
    read page rows, with the same results; later writes keep the files in their old layout."""
    ds, qs = pages
    client = open_client(str(tmp_path / "m.db"))
    new = [MilvusColbertRetriever(client, "c", n_candidates=3, exhaustive_rows=x) for x in (0, 300_000)]
    new[0].create_collection()
    new[0].add_pages(list(range(len(ds))), ds)
    want = [[(row["page_id"], s) for s, row in r.search_pages(q, 5)] for r in new for q in qs]
    for k in ("codes", "scales", "spans"): new[0].files.paths[k].unlink()
    old = [MilvusColbertRetriever(client, "c", n_candidates=3, exhaustive_rows=x) for x in (0, 300_000)]
    bits = np.uint16 if old[1].cand_dtype == "bfloat16" else np.float32   # bfloat16 bits where the CPU runs them
    assert old[0].files.spans([0]) is None and old[1].small().matrix.dtype == bits
    got = [[(row["page_id"], s) for s, row in r.search_pages(q, 5)] for r in old for q in qs]
    assert [[p for p, _ in g] for g in got] == [[p for p, _ in w] for w in want]
    np.testing.assert_allclose([s for g in got for _, s in g], [s for w in want for _, s in w], rtol=1e-6)
    old[0].add_pages([4], [ds[7]]); old[0].delete_pages([7])   # page 4 now shows page 7's content; 7 is gone
    for r in (old[0], MilvusColbertRetriever(client, "c", n_candidates=3)):   # a new reader: no stale small matrix
        (score, row), *rest = r.search_pages(qs[1], 10)
        assert row["page_id"] == 4 and 7 not in {x["page_id"] for _, x in rest}
        np.testing.assert_allclose(score, brute(qs[1], [ds[7]])[0], rtol=1e-3)
    assert not any(old[0].files.paths[k].exists() for k in ("codes", "scales", "spans"))


def test_a_page_deleted_through_another_retriever_is_not_returned(tmp_path, pages):
    "The page files record deletions: a second retriever on the same database never returns a page the first deleted."
    ds, qs = pages
    r = candidate_stage_on(tmp_path, ds)
    other = MilvusColbertRetriever(r.client, "c", n_candidates=2, exhaustive_rows=0)
    assert other.search_pages(qs[0], 1)[0][1]["page_id"] == 4
    r.delete_pages([4])
    assert 4 not in {row["page_id"] for _, row in other.search_pages(qs[0], 10)}
    r.add_pages([4], [ds[4]])   # stored again: found again
    assert other.search_pages(qs[0], 1)[0][1]["page_id"] == 4


def test_page_files_ahead_of_the_page_rows_are_not_trusted(tmp_path, pages):
    """Writes cut short: page files ahead of the page rows are ignored (searches return the version the page rows
    name, with its exact score); page rows ahead of the files' commit are committed when the collection is opened."""
    from colpali_milvus.candidates import centroid_block, page_centroids
    from colpali_milvus.maxsim import bf16_bits
    from colpali_milvus.store import page_row
    ds, qs = pages
    r = candidate_stage_on(tmp_path, ds)
    block = bf16_bits(centroid_block(page_centroids(ds[0], r.pool), r.pool))
    r.files.append([ds[0]], [block], [4])   # page 4's new version in the files, but no page row for it
    (score, row), *_ = r.search_pages(qs[0], 1)
    assert row["page_id"] == 4 and row["slot"] == 4
    np.testing.assert_allclose(score, brute(qs[0], [ds[4]])[0], rtol=1e-3)
    (offset, slot), = r.files.append([ds[0]], [block], [4])   # cut short the other way: the page row, not the commit
    r.db.upsert("c", [page_row(4, ds[0].mean(0), len(ds[0]), r.pool, {}, offset, slot)])
    r = MilvusColbertRetriever(r.client, "c", n_candidates=2, exhaustive_rows=0)   # opening commits what is stored
    assert r.files.uncommitted().tolist() == [10]   # the first write cut short stays out
    found = r.search_pages(ds[0][:20], 2)
    assert {row["page_id"] for _, row in found} == {0, 4} and found[0][1]["slot"] in (0, slot)
    np.testing.assert_allclose([s for s, _ in found], brute(ds[0][:20], [ds[0]])[0], rtol=1e-3)


def test_more_pages_than_n_candidates_can_be_asked_for(tmp_path, pages):
    "A search for k > n_candidates pages through the candidate stage returns k pages, best first by exact score."
    ds, qs = pages
    r = candidate_stage_on(tmp_path, ds)   # n_candidates=2
    got = r.search_pages(qs[1], k=6)
    ids, scores = [row["page_id"] for _, row in got], [s for s, _ in got]
    assert len(set(ids)) == 6 and ids[0] == 7 and scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, brute(qs[1], [ds[i] for i in ids]), rtol=1e-3)


def test_page_files_keep_the_centroids_per_page_they_were_written_with(tmp_path, pages):
    """New Lite collections get `LITE_POOL` centroids per page; a collection opened with another `pool` (or the
    default) reads its blocks as written, and so do files of versions that did not record it (96); re-creating a
    collection takes the pool asked for."""
    from colpali_milvus.retriever import LITE_POOL
    ds, qs = pages
    client = open_client(str(tmp_path / "m.db"))
    assert MilvusColbertRetriever(client, "new").pool == LITE_POOL
    w = MilvusColbertRetriever(client, "c", pool=96, n_candidates=3, exhaustive_rows=0)
    w.create_collection(); w.add_pages(list(range(len(ds))), ds)
    want = [[(row["page_id"], s) for s, row in w.search_pages(q, 3)] for q in qs]
    assert w.files.paths["pool"].read_text() == "96"
    def reopened(**kw):
        r = MilvusColbertRetriever(client, "c", n_candidates=3, exhaustive_rows=0, **kw)
        assert r.pool == 96 and r.files.centroid_codes(len(ds))[0].shape == (96 * len(ds), 128)
        return [[(row["page_id"], s) for s, row in r.search_pages(q, 3)] for q in qs]
    assert reopened() == want and reopened(pool=64) == want
    w.files.paths["pool"].unlink()   # as earlier versions left the files
    assert reopened() == want
    r = MilvusColbertRetriever(client, "c", pool=64)
    r.create_collection(); r.add_pages([0], [ds[0]])
    assert r.pool == 64 and MilvusColbertRetriever(client, "c").pool == 64
