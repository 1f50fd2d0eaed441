"""Token pooling of ColPali-shaped pages: vector counts, unit norm, kept prompt vectors, and scores close to unpooled."""
import numpy as np
from helpers import normalized
import pytest
import torch
from colpali_milvus.pooling import pool_tokens, pool_pages
from colpali_milvus.maxsim import maxsim


def colpali_like_page(rng, n_words=80):
    "1024 'patches' (each a noisy copy of one of `n_words` word vectors or of 8 background directions) + 6 prompt vectors."
    words, bg = normalized(rng.standard_normal((n_words, 128))), normalized(rng.standard_normal((8, 128)))
    src = np.concatenate([words[rng.integers(0, n_words, 600)], bg[rng.integers(0, 8, 424)]])
    return normalized(np.concatenate([src + 0.3 * rng.standard_normal(src.shape) / np.sqrt(128), rng.standard_normal((6, 128))])), words

@pytest.mark.parametrize("factor,expected", [(2, 512 + 6), (3, 341 + 6)])
def test_colpali_page_sizes(factor, expected):
    page, _ = colpali_like_page(np.random.default_rng(1))
    out = pool_tokens(page, factor, keep_last=6)
    assert out.shape == (expected, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out[-6:], page[-6:])   # the prompt vectors are kept as they are

def test_scores_close_to_unpooled():
    "A query made of words shown on the page scores nearly the same on the pooled page (within 5%)."
    rng = np.random.default_rng(2)
    page, words = colpali_like_page(rng)
    q = normalized(words[:20] + 0.5 * rng.standard_normal((20, 128)) / np.sqrt(128))
    full = maxsim(q, [page])[0]
    for f in (2, 3):
        pooled = maxsim(q, [pool_tokens(page, f, keep_last=6)])[0]
        assert abs(pooled - full) / full < 0.05, (f, pooled, full)

def test_bf16_tensor_and_threads_agree():
    rng = np.random.default_rng(3)
    pages = [colpali_like_page(rng)[0][:200] for _ in range(3)]
    seq = pool_pages(pages, 2, keep_last=6, num_workers=1)
    par = pool_pages(pages, 2, keep_last=6, num_workers=3)
    for a, b in zip(seq, par): np.testing.assert_array_equal(a, b)
    out = pool_tokens(torch.from_numpy(pages[0]).to(torch.bfloat16), 2, keep_last=6)
    assert out.dtype == np.float32 and out.shape == (97 + 6, 128)

def test_bad_input():
    page = np.ones((10, 128), np.float32)
    with pytest.raises(ValueError, match="pool_factor must be a positive integer"): pool_tokens(page, True)
    with pytest.raises(ValueError, match="keep_last must be an int"): pool_tokens(page, 2, keep_last=-1)
    with pytest.raises(ValueError, match="NaN"): pool_tokens(np.full((4, 128), np.nan), 2)


def test_index_option_pools_pages_and_is_fixed_per_collection(tmp_path, encoder, sample_pdf):
    "ColPaliIndex(token_pool_factor=2) stores pooled pages (image patches pooled, prompt vectors kept), records the factor,"
    " refuses another factor on reopening, searches with exact MaxSim over the stored vectors, and still draws maps."
    from colpali_milvus.core import ModelMismatchError
    from colpali_milvus.index import ColPaliIndex
    from colpali_milvus.simmap import Explorer
    enc = encoder
    db = tmp_path / "p.db"
    ix = ColPaliIndex(db, encoder=enc, pages_dir=tmp_path / "pages", token_pool_factor=2)
    ix.add(sample_pdf, progress=False)
    rows = ix.retriever.all_page_rows(("page_id", "n_vectors", "image_path"))
    grid = enc.patch_grid(rows[0]["image_path"])
    n_img = grid.n_rows * grid.n_cols
    for r in rows:
        assert r["n_vectors"] == n_img // 2 + (grid.n_vectors - n_img)   # patches halved, prompt tokens kept
    res = ix.search("a table of results", k=3)
    stored = ix.retriever.page_vectors(ix.retriever.page_rows([res[0].page_id]))[res[0].page_id]
    q = enc.encode_queries("a table of results")[0]
    np.testing.assert_allclose(res[0].score, maxsim(q, [stored])[0], rtol=1e-3)
    ex = Explorer(ix, "a table of results", k=2, background=False)
    ex.select(0)
    assert ex.maps is not None and ex.maps.grid == (grid.n_cols, grid.n_rows)
    ix.close()
    again = ColPaliIndex(db, encoder=enc, pages_dir=tmp_path / "pages")
    assert again.token_pool_factor == 2
    again.close()
    with pytest.raises(ModelMismatchError, match="token_pool_factor=2"):
        ColPaliIndex(db, encoder=enc, pages_dir=tmp_path / "pages", token_pool_factor=3)
