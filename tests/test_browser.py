"""The explorer as a person sees it: an executed notebook, exported to HTML with its widget state, opened in headless
Chromium; pixel checks that the thumbnails and the heatmap are painted. The screenshot is kept in test-artifacts/."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colpali_milvus.widgets import thumbnail_png

HERE = Path(__file__).parent
NOTEBOOK = HERE/'browser'/'explorer.ipynb'
EMBED_JS = HERE/'browser'/'vendor'/'html-manager'/'embed.js'  # @jupyter-widgets/html-manager 1.0.15, see its README
ARTIFACTS = Path(os.environ.get('COLPALI_MILVUS_ARTIFACTS', HERE.parent/'test-artifacts'))
CHROMIUM = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
DRIVER = shutil.which('chromedriver')

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason='headless Chromium is not installed: apt-get install chromium chromium-driver '
                              '(scripts/setup.sh does it) to run the browser test'),
    pytest.mark.timeout(600),
]

def execute_notebook(path:Path, cwd:Path):
    "The notebook at `path`, executed in `cwd` with its widget state stored in its metadata."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    env_path = os.pathsep.join([str(HERE.parent), os.environ.get('PYTHONPATH', '')])
    os.environ['PYTHONPATH'] = env_path  # the kernel imports this checkout's package
    NotebookClient(nb, timeout=300, kernel_name='python3', store_widget_state=True,
                   resources={'metadata': {'path': str(cwd)}}).execute()
    return nb

def export_html(nb, out:Path)->Path:
    "`nb` as HTML in `out`, with the vendored widget renderer beside it: no CDN is needed to show the widgets."
    from nbconvert import HTMLExporter
    (out/'vendor').mkdir(parents=True, exist_ok=True)
    shutil.copy(EMBED_JS, out/'vendor'/'embed.js')
    ex = HTMLExporter(template_name='lab', widget_renderer_url='vendor/embed.js', require_js_url='',
                      mathjax_url='', jquery_url='')
    body, _ = ex.from_notebook_node(nb)
    (out/'explorer.html').write_text(body, encoding='utf-8')
    return out/'explorer.html'

RECTS_JS = """
const rect = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
const imgs = Array.from(document.querySelectorAll('img.widget-image'));
return {ready: imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0),
        n: imgs.length, rects: imgs.map(rect), natural: imgs.map(i => [i.naturalWidth, i.naturalHeight]),
        dropdown: Array.from(document.querySelectorAll('.widget-dropdown select')).map(s => s.selectedOptions[0] ?
                  s.selectedOptions[0].textContent : ''),
        captions: Array.from(document.querySelectorAll('.widget-html-content')).map(e => e.textContent),
        dpr: window.devicePixelRatio};
"""

def screenshot(html:Path, png:Path, n_images:int)->dict:
    "Open `html` in headless Chromium, wait until `n_images` widget images are painted, save a screenshot to `png`."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='chromium-profile-')
    for a in ('--headless', '--no-sandbox', '--disable-gpu', f'--user-data-dir={profile}', '--window-size=1400,1100',
              '--force-device-scale-factor=1', '--hide-scrollbars'):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.get(html.as_uri())
        WebDriverWait(drv, 60).until(
            lambda d: (lambda s: s['ready'] and s['n'] >= n_images)(d.execute_script(RECTS_JS)))
        drv.execute_script("document.querySelector('.widget-image').closest('.jp-Cell').scrollIntoView();")
        info = drv.execute_script(RECTS_JS)
        drv.save_screenshot(str(png))
        return info
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)

def crop(shot:Image.Image, rect, dpr:float=1.)->np.ndarray:
    left, top, w, h = (v*dpr for v in rect)
    return np.asarray(shot.crop((round(left), round(top), round(left+w), round(top+h))).convert('RGB'), np.float32)

def heat_colour(h:float, alpha:float=0.6)->np.ndarray:
    "The colour of a white page under a patch of heat `h`, as `blend_heatmap` paints it."
    from colpali_milvus.simmap import CMAP
    c = CMAP[int(round(h*255))].astype(np.float32)
    a = alpha*(1/3 + 2/3*h)
    return 255*(1-a) + c*a

@pytest.fixture(scope='module')
def rendered():
    "Execute the explorer notebook, export it, screenshot it: (screenshot, page info, notebook's printed facts)."
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='explorer-nb-'))
    try:
        nb = execute_notebook(NOTEBOOK, work)
        assert 'widgets' in nb.metadata and nb.metadata['widgets']['application/vnd.jupyter.widget-state+json']['state']
        facts = json.loads(next(o['text'] for o in nb.cells[3].outputs if o.get('name') == 'stdout'))
        out = ARTIFACTS/'explorer_html'
        shutil.rmtree(out, ignore_errors=True)
        html = export_html(nb, out)
        png = ARTIFACTS/'explorer.png'
        info = screenshot(html, png, n_images=len(facts['results']) + 1)
        yield Image.open(png).convert('RGB'), info, facts  # the page images stay until the tests are done
    finally: shutil.rmtree(work, ignore_errors=True)

def letterboxed(png:bytes, w:int, h:int)->np.ndarray:
    "The picture `png` centred in a white w x h box, as CSS object-fit: contain shows it."
    import io
    im = Image.open(io.BytesIO(png)).convert('RGB')
    box = Image.new('RGB', (w, h), 'white'); box.paste(im, ((w-im.width)//2, (h-im.height)//2))
    return np.asarray(box, np.float32)

def test_html_needs_no_cdn(rendered):
    html = (ARTIFACTS/'explorer_html'/'explorer.html').read_text()
    assert 'vendor/embed.js' in html and 'unpkg.com' not in html and 'jsdelivr' not in html
    assert 'application/vnd.jupyter.widget-state+json' in html

def test_thumbnails_are_painted(rendered):
    shot, info, facts = rendered
    k = len(facts['results'])
    assert info['n'] == k + 1  # k thumbnails and the large view
    for i in range(k):
        px = crop(shot, info['rects'][i], info['dpr'])
        assert px.shape[0] >= 100 and px.shape[1] >= 60, f'thumbnail {i} is not on screen: {info["rects"][i]}'
        grey = px.mean(axis=2)
        assert (grey > 235).mean() > 0.5, f'thumbnail {i}: a page is mostly white paper'
        assert (grey < 200).mean() > 0.01, f'thumbnail {i}: no ink (text) painted'
        want = letterboxed(thumbnail_png(facts['images'][i], 120), px.shape[1], px.shape[0])
        diff = np.abs(px - want).mean()
        assert diff < 4, f'thumbnail {i} differs from its page image by {diff:.1f} levels on average'
    caps = ' '.join(info['captions'])
    for i, p in enumerate(facts['results'], 1): assert f'#{i}' in caps and f'p. {p}' in caps and 'sample.pdf' in caps

def test_heatmap_is_painted_on_the_patch_grid(rendered):
    shot, info, facts = rendered
    px = crop(shot, info['rects'][-1], info['dpr'])
    assert px.shape[0] >= 300, f'the large view is not on screen: {info["rects"][-1]}'
    heat = np.array(facts['heat'])
    ny, nx = heat.shape
    assert (nx, ny) == tuple(facts['grid']) and heat.max() == 1.
    h, w = px.shape[:2]
    dist = []
    for y in range(ny):
        # the paper colour of each patch (the median skips text) is the colormap's colour for its heat
        for x in range(nx):
            cell = px[int((y+.15)*h/ny):int((y+.85)*h/ny), int((x+.15)*w/nx):int((x+.85)*w/nx)].reshape(-1, 3)
            paper = cell[np.argsort(cell.sum(1))[len(cell)*3//4]]  # a light pixel: paper, not ink
            dist.append(np.abs(paper - heat_colour(heat[y, x])).max())
    assert max(dist) <= 12, f'patch colours differ from the heatmap by up to {max(dist):.0f} levels'
    assert len(np.unique(np.round(heat, 2))) >= 4, 'the notebook should show a graded map (one token)'
    assert heat_colour(1.)[2] < 140 and heat_colour(0.)[2] > 200  # hottest is yellow, coldest purple-white: distinct
    assert info['dropdown'] == [facts['token']]  # the menu shows the token whose map is drawn
    assert any(f'Token “{facts["token"]}”' in c for c in info['captions'])
