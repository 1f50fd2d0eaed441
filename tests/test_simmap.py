"""Tests of colpali_milvus.simmap: patch grids from the processor, similarity maps, heatmaps and the Explorer widget."""
import base64
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colpali_milvus.core import CollectionNotFoundError
from colpali_milvus.simmap import (
    ALL_TOKENS,
    CMAP,
    Explorer,
    PageMaps,
    SimilarityMapError,
    blend_heatmap,
    image_token_mask,
    page_maps,
    processor_grid,
    query_tokens,
    token_options,
)

QUERY = 'Where is ColBERT performance table?'

@pytest.fixture(scope='module')
def enc(tiny_model_dir):
    from colpali_milvus.encode import ColPaliEncoder
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return ColPaliEncoder(str(tiny_model_dir))

@pytest.fixture(scope='module')
def page():
    "A page with a dark block in its top-left quarter."
    im = Image.new('RGB', (600, 800), 'white')
    im.paste((20, 20, 20), (0, 0, 300, 400))
    return im

@pytest.fixture(scope='module')
def index(enc, sample_pdf, tmp_path_factory):
    from colpali_milvus.index import ColPaliIndex
    ix = ColPaliIndex(str(tmp_path_factory.mktemp('simmap')/'c.db'), encoder=enc)
    ix.add(sample_pdf, progress=False)
    yield ix
    ix.close()

# --- grid and layout from the processor ---------------------------------------------------------------------------

def test_tiny_colpali_grid_comes_from_the_processor(enc):
    assert processor_grid(enc.processor, (600, 800), enc.model) == (4, 4)  # 56 px / 14 px patches, not 32 x 32

class _Cfg:
    def __init__(self, **kw): self.__dict__.update(kw)

def test_colpali_grid_follows_image_size_and_patch_size(enc):
    import copy
    proc = copy.deepcopy(enc.processor)
    proc.image_processor.size = {'height': 112, 'width': 112}
    model = _Cfg(config=_Cfg(vision_config=_Cfg(patch_size=14)))
    assert processor_grid(proc, (600, 800), model) == (8, 8)
    model.config.vision_config.patch_size = 28
    assert processor_grid(proc, (600, 800), model) == (4, 4)
    with pytest.raises(SimilarityMapError, match='patch_size'): processor_grid(proc, (600, 800), _Cfg())

def test_colqwen2_grid_is_dynamic_and_width_first():
    from colpali_engine.models import ColQwen2Processor
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    p = object.__new__(ColQwen2Processor); p.image_processor = Qwen2VLImageProcessor()
    model = _Cfg(config=_Cfg(vision_config=_Cfg(spatial_merge_size=2)))
    h, w = smart_resize(800, 600, factor=28, min_pixels=p.image_processor.size['shortest_edge'],
                        max_pixels=p.image_processor.size['longest_edge'])
    assert processor_grid(p, (600, 800), model) == (w // 28, h // 28)
    nx, ny = processor_grid(p, (1200, 400), model)
    assert nx > 2*ny  # a wide page gives a wide grid: (width, height) is read in the right order
    assert processor_grid(p, (600, 800)) == (w // 28, h // 28)  # without the model: the image processor's merge_size

def test_idefics3_grid_reads_height_width():
    from colpali_engine.models.idefics3.colidefics3.processing_colidefics3 import ColIdefics3Processor
    from transformers import Idefics3ImageProcessor
    p = object.__new__(ColIdefics3Processor)
    p.image_processor = Idefics3ImageProcessor(size={'longest_edge': 2048}, max_image_size={'longest_edge': 512})
    p.image_seq_len = 64
    assert processor_grid(p, (2048, 1024)) == (32, 16)  # 4 x 2 tiles of 8 x 8 tokens, wide
    assert processor_grid(p, (1024, 2048)) == (16, 32)

def test_image_mask_lines_up_with_stored_vectors(enc, page):
    m = image_token_mask(enc.processor, page)
    vecs = enc.encode_images([page], progress=False)[0]
    assert len(m) == len(vecs) and m.sum() == 16 and m[:16].all()

def _colpali_engine_maps():
    "colpali-engine's get_similarity_maps_from_embeddings, loaded from its file (its package imports matplotlib)."
    pytest.importorskip('einops')
    import colpali_engine
    f = Path(colpali_engine.__file__).parent/'interpretability'/'similarity_map_utils.py'
    spec = importlib.util.spec_from_file_location('_cpe_simmap_utils', f)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.get_similarity_maps_from_embeddings

def test_maps_match_colpali_engine_layout(enc, page):
    import torch
    ref_fn = _colpali_engine_maps()
    qv, pv = enc.encode_queries(QUERY)[0], enc.encode_images([page], progress=False)[0]
    pm = page_maps(enc.processor, qv, pv, page, enc.model)
    mask = torch.from_numpy(image_token_mask(enc.processor, page))[None]
    ref = ref_fn(torch.from_numpy(pv)[None], torch.from_numpy(qv)[None], (4, 4), mask)[0].numpy()  # (n, x, y)
    np.testing.assert_allclose(pm.maps, ref.transpose(0, 2, 1), atol=1e-5)

# --- maps, contributions, tokens ----------------------------------------------------------------------------------

def test_page_maps_add_up_to_the_maxsim_score(enc, page):
    qv, pv = enc.encode_queries(QUERY)[0], enc.encode_images([page], progress=False)[0]
    pm = page_maps(enc.processor, qv, pv, page, enc.model, query_tokens(enc.processor, QUERY))
    sims = qv @ pv.T
    assert pm.maps.shape == (len(qv), 4, 4) and pm.grid == (4, 4)
    assert pm.score == pytest.approx(float(sims.max(1).sum()), abs=1e-4)
    on_image = sims.argmax(1) < 16
    assert pm.image_score == pytest.approx(float(sims.max(1)[on_image].sum()), abs=1e-4)
    assert pm.contrib.sum() == pytest.approx(pm.image_score, abs=1e-4)
    # a patch gets credit only if some token's best match on the whole page is that patch
    credited = {int(sims[i].argmax()) for i in np.flatnonzero(on_image)}
    assert set(np.flatnonzero(pm.contrib.reshape(-1))) <= credited

def test_page_maps_refuse_vectors_of_another_page(enc, page):
    qv, pv = enc.encode_queries(QUERY)[0], enc.encode_images([page], progress=False)[0]
    with pytest.raises(SimilarityMapError, match='Re-index the page'):
        page_maps(enc.processor, qv, pv[:20], page, enc.model)
    with pytest.raises(ValueError, match='labels'): page_maps(enc.processor, qv, pv, page, enc.model, (['a'], [True]))

def test_query_tokens_label_every_vector_and_mark_the_text(enc):
    labels, is_text = query_tokens(enc.processor, 'ab c')
    assert labels == ['<bos>', 'a', 'b', '␣', 'c'] + ['<pad>']*10  # <bos>, the text, 10 augmentation tokens
    assert is_text == [False, True, True, True, True] + [False]*10
    assert len(labels) == len(enc.encode_queries('ab c')[0])

def test_token_map_scaling_and_options():
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4), np.full((4, 4), 2., np.float32)])
    contrib = np.zeros((4, 4), np.float32); contrib[1, 2] = 3.
    pm = PageMaps(['<bos>', 'x'], [False, True], maps, contrib, 5., 3., (4, 4))
    assert pm.token_map(0)[0, 0] == 0 and pm.token_map(0)[3, 3] == pytest.approx(1)
    assert np.all(pm.token_map(1) == 0)  # a flat map stays flat instead of dividing by zero
    assert pm.token_map(ALL_TOKENS)[1, 2] == 1 and pm.token_map(ALL_TOKENS).sum() == 1
    assert token_options(pm) == [('all tokens (MaxSim)', ALL_TOKENS), ('x', 1)]

def test_blend_heatmap_colours_each_patch():
    heat = np.array([[0., 1.], [0.5, 0.]])
    im = blend_heatmap(Image.new('RGB', (200, 100), 'white'), heat, alpha=0.6)
    assert im.size == (200, 100)
    def want(h):
        a = 0.6*(1/3 + 2/3*h); return tuple(int(round(255*(1-a) + c*a)) for c in CMAP[int(round(h*255))])
    assert (im.getpixel((150, 25)) == want(1.) and im.getpixel((50, 75)) == want(0.5)
            and im.getpixel((10, 10)) == want(0.))
    assert blend_heatmap(Image.new('RGB', (200, 100), 'white'), heat, alpha=0.).getpixel((150, 25)) == (255, 255, 255)
    assert max(blend_heatmap(Image.new('RGB', (2000, 1000)), heat, max_side=300).size) == 300
    with pytest.raises(ValueError, match='between 0 and 1'): blend_heatmap(im, heat, alpha=-0.1)

# --- the explorer -------------------------------------------------------------------------------------------------

def test_explorer_searches_selects_and_draws_maps(index):
    ex = Explorer(index, QUERY, k=3, thumb_side=64, large_side=300)
    assert len(ex.results) == 3 and [r.rank for r in ex.results] == [1, 2, 3] and ex.selected == 0
    assert ex.cards[0].layout.border.endswith('#1976d2')
    assert ex.maps.grid == (4, 4) and ex.token.value == ALL_TOKENS
    assert ex.maps.score == pytest.approx(ex.results[0].score, abs=1e-2)  # same stored vectors, same MaxSim
    assert max(Image.open(__import__('io').BytesIO(ex.image.value)).size) <= 300
    first = ex.image.value
    ex.token.value = ex.token.options[2][1]
    assert ex.image.value != first and 'Token' in ex.legend.value
    ex.cards[1].children[-1].click()
    assert ex.selected == 1 and ex.token.value == ex.token.options[2][1]
    with pytest.raises(IndexError, match='out of range'): ex.select(3)

def test_explorer_search_box_runs_in_background_and_reports_progress(index):
    ex = index.explore(k=2)
    assert ex.results == [] and 'Type a query' in ex.empty.value
    ex.box.value = 'ColPali on page images'  # what pressing Enter does
    ex.wait(60)
    assert ex.error is None and ex.query == 'ColPali on page images' and len(ex.results) == 2
    assert ex.progress.value == 3 and ex.progress.layout.visibility == 'hidden' and not ex.button.disabled
    assert 'ColPali on page images' in ex.status.value

def test_explorer_shows_errors_instead_of_losing_them(enc, tmp_path):
    from colpali_milvus.index import ColPaliIndex
    with ColPaliIndex(str(tmp_path/'empty.db'), encoder=enc) as empty:
        ex = Explorer(empty, k=2)
        ex.search('anything').wait(60)
        assert type(ex.error).__name__ == 'CollectionNotFoundError' and 'add documents first' in ex.status.value
        with pytest.raises(CollectionNotFoundError, match='add documents first'):
            ex.search('anything', background=False)

def test_explorer_page_without_image_shows_a_note(index, tmp_path):
    ex = Explorer(index, QUERY, k=2, thumb_side=64, large_side=200)
    r = ex.results[1]
    moved = Path(r.image_path).rename(tmp_path/'moved.png')
    try:
        ex._maps.clear(); ex.select(1)
        assert ex.maps is None and 'no similarity map' in ex.note.value and len(ex.image.value) > 0
    finally: moved.rename(r.image_path)

def test_explorer_state_embeds_the_heatmap(index, tmp_path):
    from ipywidgets.embed import dependency_state, embed_minimal_html
    ex = Explorer(index, QUERY, k=2, thumb_side=64, large_side=200, search_box=False)
    out = tmp_path/'ex.html'
    embed_minimal_html(out, views=[ex.widget], state=dependency_state(ex.widget), title='explorer')
    text = out.read_text()
    assert out.stat().st_size < 400_000  # two thumbnails and one 200 px view
    assert base64.b64encode(ex.image.value).decode() in text
    assert 'all tokens (MaxSim)' in text and 'sample.pdf' in text
    assert ex.widget.children[0].layout.display == 'none'  # no search box
