"""Tests of colpali_milvus.widgets: result cards, the results gallery, and its embeddable widget state."""
import base64
import io
import json
import os

import ipywidgets as widgets
import pytest
from PIL import Image, ImageDraw

from colpali_milvus.core import SearchResult
from colpali_milvus.widgets import ResultsGallery, result_card, show_results, thumbnail_png

COLOURS = [(214, 39, 40), (44, 160, 44), (31, 119, 180)]

def size(png: bytes): return Image.open(io.BytesIO(png)).size
def centre(png: bytes):
    im = Image.open(io.BytesIO(png)).convert('RGB'); return im.getpixel((im.width // 2, im.height // 2))

@pytest.fixture
def pages(tmp_path):
    "Three 600x800 page images of distinct colours, labelled with their page number."
    paths = []
    for i, c in enumerate(COLOURS, 1):
        im = Image.new('RGB', (600, 800), c)
        ImageDraw.Draw(im).text((40, 40), f'page {i}', fill='white')
        p = tmp_path / f'page-{i}.png'; im.save(p); paths.append(p)
    return paths

@pytest.fixture
def results(pages, tmp_path):
    return [SearchResult(rank=i, score=30.0 - 2.5 * i, page_id=10 + i, source=str(tmp_path / 'report.pdf'),
                         page=i, image_path=str(p)) for i, p in enumerate(pages, 1)]

def caption(card): return card.children[1].value
def button(card): return card.children[-1]

# --- thumbnails ---------------------------------------------------------------------------------------------------

def test_thumbnail_fits_max_side_keeps_aspect_and_never_upscales(pages):
    t = thumbnail_png(pages[0], 100)
    assert t.startswith(b'\x89PNG\r\n\x1a\n')
    assert size(t) == (75, 100)
    assert centre(t) == COLOURS[0]
    assert size(thumbnail_png(pages[0], 5000)) == (600, 800)

def test_thumbnail_cache_is_invalidated_when_the_file_changes(pages):
    a = thumbnail_png(pages[0], 64)
    assert thumbnail_png(str(pages[0]), 64) is a  # served from the cache
    Image.new('RGB', (300, 300), (0, 0, 0)).save(pages[0])
    st = os.stat(pages[0]); os.utime(pages[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = thumbnail_png(pages[0], 64)
    assert size(b) == (64, 64) and centre(b) == (0, 0, 0)

def test_thumbnail_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.png: page image not found'):
        thumbnail_png(tmp_path / 'missing.png')
    (tmp_path / 'junk.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='junk.png: cannot be read as an image'):
        thumbnail_png(tmp_path / 'junk.png')
    with pytest.raises(ValueError, match='positive'):
        thumbnail_png(tmp_path / 'junk.png', max_side=0)

# --- cards --------------------------------------------------------------------------------------------------------

def test_result_card_shows_thumbnail_caption_and_calls_on_select(results):
    got = []
    card = result_card(results[1], on_select=got.append, thumb_side=80)
    assert isinstance(card, widgets.VBox)
    img = card.children[0]
    assert isinstance(img, widgets.Image) and img.format == 'png'
    assert max(size(img.value)) <= 80 and centre(img.value) == COLOURS[1]
    assert '#2 · 25.00 · report.pdf · p. 2' in caption(card)
    assert button(card).description == 'View page'
    button(card).click()
    assert got == [results[1]]

def test_result_card_missing_image_shows_placeholder_and_note(results, tmp_path):
    r = SearchResult(rank=1, score=1.0, page_id=1, source='/x/a.pdf', page=3, image_path=str(tmp_path / 'gone.png'))
    card = result_card(r, thumb_side=80)
    img, cap, note, btn = card.children
    assert max(size(img.value)) <= 80
    assert 'gone.png' in note.value and 'not found' in note.value
    assert 'p. 3' in cap.value and btn.disabled  # no on_select: nothing to do on click

# --- gallery ------------------------------------------------------------------------------------------------------

def test_gallery_cards_in_rank_order_with_captions(results):
    g = ResultsGallery(results[::-1], ncols=2, thumb_side=90)
    assert isinstance(g.widget, widgets.Widget)
    assert isinstance(g.grid, widgets.GridBox) and list(g.grid.children) == g.cards
    assert len(g.cards) == len(results) == len(g)
    for r, card in zip(results, g.cards):
        for s in (f'#{r.rank}', f'{r.score:.2f}', 'report.pdf', f'p. {r.page}'): assert s in caption(card)
        assert centre(card.children[0].value) == COLOURS[r.page - 1]

def test_gallery_select_and_click_change_the_large_view(results, pages):
    g = ResultsGallery(results, large_side=400)
    assert g.selected == 0 and centre(g.large_image.value) == COLOURS[0]
    before = g.large_image.value
    g.select(2)
    assert g.large_image.value != before
    assert g.large_image.value == thumbnail_png(pages[2], 400) and 'p. 3' in g.large_caption.value
    button(g.cards[1]).click()
    assert g.selected == 1 and centre(g.large_image.value) == COLOURS[1]
    assert g.buttons[1].button_style == 'primary' and g.buttons[0].button_style == ''
    with pytest.raises(IndexError, match='out of range'): g.select(3)

def test_thumbnails_and_large_view_are_bounded(results):
    g = ResultsGallery(results, thumb_side=64, large_side=300)
    for card in g.cards: assert max(size(card.children[0].value)) <= 64
    for i in range(len(results)):
        g.select(i); assert max(size(g.large_image.value)) <= 300
    assert size(g.large_image.value) == (225, 300)

def test_gallery_accepts_json_dicts(results):
    dicts = json.loads(json.dumps([dict(r.to_dict(), name=r.name) for r in results]))
    g = ResultsGallery(dicts, thumb_side=64)
    assert len(g.cards) == 3 and all(isinstance(r, SearchResult) for r in g.results)
    assert '#3 · 22.50 · report.pdf · p. 3' in caption(g.cards[2])
    g.select(2); assert centre(g.large_image.value) == COLOURS[2]
    with pytest.raises(TypeError, match='SearchResult objects or dicts'): ResultsGallery([1.0])

def test_empty_results_say_no_results():
    g = ResultsGallery([], title='nothing')
    assert len(g) == 0 and g.cards == []
    assert 'No results' in g.widget.children[-1].value
    with pytest.raises(IndexError): g.select(0)

def test_missing_image_in_gallery_does_not_crash(results, tmp_path):
    os.remove(results[0].image_path)
    g = ResultsGallery(results, thumb_side=64, large_side=200)
    assert 'not found' in g.large_note.value and max(size(g.large_image.value)) <= 200
    assert len(g.cards[0].children) == 4 and len(g.cards[1].children) == 3
    g.select(1); assert g.large_note.value == '' and centre(g.large_image.value) == COLOURS[1]

def test_show_results_displays_and_returns_gallery(results, monkeypatch):
    shown = []
    monkeypatch.setattr('IPython.display.display', lambda *a, **k: shown.extend(a))
    g = show_results(results, ncols=3, thumb_side=64, large_side=200, title='revenue 2023')
    assert isinstance(g, ResultsGallery) and shown == [g.widget]
    assert 'revenue 2023' in g.widget.children[0].value
    shown.clear(); g._ipython_display_(); assert shown == [g.widget]

def test_widget_state_embeds_png_bytes(results, tmp_path):
    from ipywidgets.embed import dependency_state, embed_minimal_html
    g = ResultsGallery(results, thumb_side=64, large_side=200)
    out = tmp_path / 'gallery.html'
    # the gallery's own state: without `state`, every live widget of the process (other tests') is embedded too
    embed_minimal_html(out, views=[g.widget], state=dependency_state(g.widget), title='gallery')
    text = out.read_text()
    for r in results: assert base64.b64encode(thumbnail_png(r.image_path, 64)).decode() in text
    assert base64.b64encode(g.large_image.value).decode() in text
    assert 'report.pdf' in text and 'View page' in text
    assert out.stat().st_size < 200_000  # small thumbnails, bounded large view
