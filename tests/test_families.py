"""Every model family (ColPali, ColQwen2, ColQwen2.5, ColSmol) on its tiny random model: encode, index, search, patch
grid."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILIES
from PIL import Image

from colpali_milvus.encode import FAMILIES, ColPaliEncoder, TinyModelWarning
from colpali_milvus.index import ColPaliIndex
from colpali_milvus.maxsim import maxsim
from colpali_milvus.tiny import TINY_ALIASES, is_tiny_random

# tiny family -> (encoder.family, config model_type, patch grid depends on the page's shape)
EXPECTED = {"colpali": ("ColPali", "paligemma", False), "colqwen2": ("ColQwen2", "qwen2_vl", True),
            "colqwen2.5": ("ColQwen2.5", "qwen2_5_vl", True), "colsmol": ("ColIdefics3", "idefics3", True)}
QUERIES = ["What was the total revenue in 2023 according to the table?", "hi", "ünïcødé query ✓"]


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyModelWarning)
        return ColPaliEncoder(path, device="cpu", **kw)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def fam_enc(request, tiny_family_dir):
    "(tiny family name, its encoder)."
    return request.param, _load(tiny_family_dir(request.param))


def _pages():
    "Pages of different shapes: portrait, landscape strip, small square, tall random noise."
    rng = np.random.default_rng(0)
    return [Image.new("RGB", (850, 1100), "white"),
            Image.fromarray(rng.integers(0, 255, (60, 200, 3), dtype=np.uint8)),
            Image.new("RGB", (30, 30), (200, 30, 30)),
            Image.fromarray(rng.integers(0, 255, (300, 90, 3), dtype=np.uint8))]


def _coords_image(w, h):
    "An RGB image whose red channel grows left to right and green top to bottom."
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


# ---------------------------------------------------------------- family from the config

def test_family_comes_from_config(fam_enc, tiny_family_dir):
    fam, enc = fam_enc
    name, model_type, _ = EXPECTED[fam]
    assert (enc.family, enc.model_type, enc.dim, enc.is_tiny) == (name, model_type, 128, True)
    assert FAMILIES[model_type].name == name and f"family={name!r}" in repr(enc)
    cfg = json.loads((tiny_family_dir(fam) / "config.json").read_text())
    assert cfg["model_type"] == model_type and is_tiny_random(cfg)


def test_family_not_from_name(tmp_path, tiny_family_dir):
    d = tmp_path / "colpali-v1.2"  # a ColQwen2 whose folder name says ColPali
    shutil.copytree(tiny_family_dir("colqwen2"), d)
    assert _load(d).family == "ColQwen2"


def test_tiny_aliases(tmp_path, monkeypatch):
    monkeypatch.setenv("COLPALI_MILVUS_CACHE", str(tmp_path))
    for alias, fam in TINY_ALIASES.items():
        with pytest.warns(TinyModelWarning, match=EXPECTED[fam][0]):
            enc = ColPaliEncoder(alias, device="cpu")
        assert (enc.model_name, enc.family, enc.is_tiny) == (alias, EXPECTED[fam][0], True)
        assert enc.path == str((tmp_path / f"tiny-{fam}").resolve())


# ---------------------------------------------------------------- encoding

def test_pages_of_different_sizes(fam_enc):
    fam, enc = fam_enc
    pages = _pages()
    vecs = enc.encode_images(pages, progress=False)
    counts = [enc.vectors_per_page(p) for p in pages]
    assert [v.shape for v in vecs] == [(n, 128) for n in counts]
    for v in vecs:
        assert v.dtype == np.float32 and np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert (len(set(counts)) > 1) == EXPECTED[fam][2]  # ColQwen / ColSmol: the page's shape sets its vector count
    assert vecs[0].shape != vecs[2].shape or not np.allclose(vecs[0], vecs[2], atol=1e-3)  # other page, other vectors


def test_pages_same_alone_or_batched(fam_enc):
    fam, enc = fam_enc
    pages = _pages()
    alone = enc.encode_images(pages, batch_size=1, progress=False)
    batched = enc.encode_images(pages, batch_size=4, progress=False)  # padded to the longest page for ColQwen/ColSmol
    assert len(alone) == len(batched) == len(pages)
    for a, b in zip(alone, batched, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_page_vectors_equal_colpali_engine(fam_enc):
    fam, enc = fam_enc
    page = _pages()[3]
    batch = enc.processor.process_images([page])
    with torch.inference_mode():
        theirs = enc.model(**batch)[0]
    np.testing.assert_allclose(enc.encode_images(page, progress=False)[0], theirs.numpy(), atol=1e-5)


def test_queries_shapes_and_padding(fam_enc):
    fam, enc = fam_enc
    vecs = enc.encode_queries(QUERIES, batch_size=3)
    lengths = [int(enc.processor.process_queries([q])["attention_mask"].sum()) for q in QUERIES]
    assert [v.shape for v in vecs] == [(n, 128) for n in lengths]
    assert lengths[1] < lengths[0]  # so the batch above was padded
    for v, q in zip(vecs, QUERIES, strict=True):
        assert np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(enc.encode_queries(q)[0], v, atol=1e-5)  # alone == padded in a batch
    (empty,) = enc.encode_queries("")
    assert len(empty) >= 10 and np.isfinite(empty).all()  # the 10 query-augmentation tokens at least


def test_queries_equal_colpali_engine_alone(fam_enc):
    fam, enc = fam_enc
    batch = enc.processor.process_queries([QUERIES[0]])
    with torch.inference_mode():
        theirs = enc.model(**batch)[0]
    np.testing.assert_allclose(enc.encode_queries(QUERIES[0])[0], theirs.numpy(), atol=1e-5)


# ---------------------------------------------------------------- the full path

@pytest.fixture(scope="module")
def short_pdf(sample_pdf, tmp_path_factory):
    "The first 3 pages of the sample PDF (fewer pages to rasterize and encode per family)."
    from pypdf import PdfReader, PdfWriter
    w = PdfWriter()
    for page in PdfReader(sample_pdf).pages[:3]: w.add_page(page)
    path = tmp_path_factory.mktemp("pdf") / "short.pdf"
    w.write(path)
    return path


def test_index_and_search(fam_enc, tmp_path, short_pdf):
    fam, enc = fam_enc
    with ColPaliIndex(uri=tmp_path / "x.db", encoder=enc, pages_dir=tmp_path / "pages") as index:
        added = index.add(short_pdf, progress=False)
        assert len(added) == len(index) == 3
        assert index.info()["dim"] == 128
        q = "Where is the ColBERT performance table?"
        res = index.search(q, k=2)
        assert [r.rank for r in res] == [1, 2] and len({r.page for r in res}) == 2
        qv = enc.encode_queries(q)[0]
        pv = enc.encode_images([r.image_path for r in res], progress=False)
        assert {len(v) for v in pv} == {enc.vectors_per_page(r.image_path) for r in res}
        np.testing.assert_allclose([r.score for r in res], maxsim(qv, pv), rtol=1e-3)
        allv = enc.encode_images([r.image_path for r in added], progress=False)  # the top 2 are the best 2 of all
        best = np.sort(maxsim(qv, allv))[::-1][:2]
        np.testing.assert_allclose([r.score for r in res], best, rtol=1e-3)



def test_similarity_maps_in_the_explorer(fam_enc, tmp_path, short_pdf):
    "The explorer draws each family's map on the encoder's patch grid, from the stored vectors, and the sums hold."
    from colpali_milvus.simmap import Explorer
    fam, enc = fam_enc
    with ColPaliIndex(uri=tmp_path / "m.db", encoder=enc, pages_dir=tmp_path / "pages") as index:
        index.add(short_pdf, progress=False)
        ex = Explorer(index, "Where is the ColBERT performance table?", k=2, background=False)
        ex.select(0)
        r, pm = ex.results[0], ex.maps
        g = enc.patch_grid(r.image_path)
        assert pm is not None and pm.grid == (g.n_cols, g.n_rows) and pm.maps.shape[1:] == (g.n_rows, g.n_cols)
        qv = enc.encode_queries("Where is the ColBERT performance table?")[0]
        pv = index.retriever.page_vectors(index.retriever.page_rows([r.page_id]))[r.page_id]
        np.testing.assert_allclose(pm.maps[0], (qv[0] @ pv[g.positions.ravel()].T).reshape(g.n_rows, g.n_cols),
                                   atol=1e-5)
        np.testing.assert_allclose(pm.score, r.score, rtol=1e-3)
        np.testing.assert_allclose(pm.contrib.sum(), pm.image_score, rtol=1e-4, atol=1e-4)
        assert len(ex.image.value) > 0   # the blended heatmap was drawn (PNG bytes in the widget)


# ---------------------------------------------------------------- the patch grid

def test_patch_grid_positions(fam_enc):
    fam, enc = fam_enc
    grids = []
    for page in _pages():
        g = enc.patch_grid(page)
        grids.append((g.n_rows, g.n_cols))
        assert g.positions.shape == (g.n_rows, g.n_cols) and g.positions.dtype == np.int64
        assert g.n_vectors == enc.vectors_per_page(page) == len(enc.encode_images(page, progress=False)[0])
        flat = g.positions.ravel()
        assert len(np.unique(flat)) == g.n_rows * g.n_cols and 0 <= flat.min() and flat.max() < g.n_vectors
        batch = enc.processor.process_images([page])
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].numpy()
        image_token = enc.model.config.image_token_index if fam == "colpali" else enc.model.config.image_token_id
        is_image = np.flatnonzero(ids == image_token)
        # every grid cell is an image token; only ColSmol has image tokens outside the grid (its global tile)
        assert set(flat) <= set(is_image)
        assert len(is_image) - len(flat) == (enc.processor.image_seq_len if fam == "colsmol" else 0)
    if EXPECTED[fam][2]:
        assert len(set(grids)) > 1, grids  # the grid follows the page's shape
        assert grids[1][0] < grids[1][1] and grids[3][0] > grids[3][1]  # strip: wide; tall page: tall


def test_colpali_grid(tiny_family_dir):
    enc = _load(tiny_family_dir("colpali"))
    g = enc.patch_grid(_pages()[1])
    assert (g.n_rows, g.n_cols) == (4, 4)  # 56 px / 14 px patches, whatever the page's shape
    np.testing.assert_array_equal(g.positions, np.arange(16).reshape(4, 4))  # image tokens first, row-major


@pytest.mark.parametrize("fam", ["colqwen2", "colqwen2.5"])
def test_colqwen_grid_matches_pixels(fam, tiny_family_dir):
    enc = _load(tiny_family_dir(fam))
    img = _coords_image(230, 380)
    g = enc.patch_grid(img)
    batch = enc.processor.process_images([img])
    t, h, w = batch["image_grid_thw"][0].tolist()
    m = enc.model.spatial_merge_size
    assert (t, g.n_rows, g.n_cols) == (1, h // m, w // m)
    # the patches merged into each image token, and the mean red/green (= x/y) of their pixels
    px = batch["pixel_values"][0][: h * w].reshape(h * w // m**2, m * m, 3, -1)  # (tokens, merged patches, RGB, t*p*p)
    x, y = px[:, :, 0].mean((1, 2)).numpy(), px[:, :, 1].mean((1, 2)).numpy()
    first = g.positions.min()
    k = g.positions - first  # image token number of each grid cell
    assert (np.diff(x[k], axis=1) > 0).all() and (np.diff(y[k], axis=0) > 0).all()


def test_colsmol_grid_matches_pixels(tiny_family_dir):
    enc = _load(tiny_family_dir("colsmol"))
    img = _coords_image(200, 60)  # 1 x 2 tiles
    g = enc.patch_grid(img)
    proc = enc.processor
    side = int(proc.image_seq_len ** 0.5)
    tile = proc.image_processor.max_image_size["longest_edge"]
    info = proc.image_processor([img], return_row_col_info=True)
    rows, cols = info["rows"][0][0], info["cols"][0][0]
    assert (rows, cols) == (1, 2) and (g.n_rows, g.n_cols) == (rows * side, cols * side)
    pv = proc.process_images([img])["pixel_values"][0]  # (tiles + global, 3, tile, tile)
    local = np.sort(g.positions.ravel())
    x, y = np.zeros(g.positions.shape), np.zeros(g.positions.shape)
    b = tile // side
    for r in range(g.n_rows):
        for c in range(g.n_cols):
            k = int(np.searchsorted(local, g.positions[r, c]))  # k-th local image token
            t, i, j = k // side**2, k % side**2 // side, k % side
            block = pv[t, :, i * b:(i + 1) * b, j * b:(j + 1) * b]
            x[r, c], y[r, c] = block[0].mean(), block[1].mean()
    assert (np.diff(x, axis=1) > 0).all() and (np.diff(y, axis=0) > 0).all()


def test_colsmol_pixel_shuffle_is_row_major(tiny_family_dir):
    """Within a tile, ColSmol's vector (i, j) holds the 2 x 2 patches at rows 2i.., columns 2j..
    (what patch_grid assumes)."""
    enc = _load(tiny_family_dir("colsmol"))
    conn, s = enc.model.model.connector, enc.model.config.scale_factor
    n = enc.model.config.vision_config.image_size // enc.model.config.vision_config.patch_size
    rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x = torch.tensor(np.stack([rr, cc], -1).reshape(1, n * n, 2), dtype=torch.float32)  # each patch: (row, col)
    out = conn.pixel_shuffle(x, s).reshape(n // s, n // s, s * s, 2)  # token (i, j) row-major -> its patches' coords
    ii, jj = np.meshgrid(np.arange(n // s), np.arange(n // s), indexing="ij")
    np.testing.assert_array_equal(out[..., 0].min(-1).values.numpy(), ii * s)
    np.testing.assert_array_equal(out[..., 1].min(-1).values.numpy(), jj * s)


def test_colsmol_grid_without_splitting(tiny_family_dir):
    "A ColSmol processor that does not split pages: the grid is the single (global) image's."
    enc = _load(tiny_family_dir("colsmol"))
    enc.processor.image_processor.do_image_splitting = False
    page = _pages()[0]
    g = enc.patch_grid(page)
    side = int(enc.processor.image_seq_len ** 0.5)
    assert (g.n_rows, g.n_cols) == (side, side)
    ids = enc.processor.process_images([page])["input_ids"][0].numpy()
    np.testing.assert_array_equal(g.positions.ravel(), np.flatnonzero(ids == enc.model.config.image_token_id))
    assert g.n_vectors == len(enc.encode_images(page, progress=False)[0])
