"""The explorer live in JupyterLab: a real JupyterLab server on 127.0.0.1 (free port, token), a notebook that indexes
the sample PDF with the tiny ColPali and shows the explorer with an Ask box (tiny random VLM), driven by headless
Chromium as a person would: type a query and press Search, click a thumbnail, pick a token, Ask, click a citation.
Each step checks what the page shows against the kernel-free truth (the same index searched here) and leaves a
screenshot in test-artifacts/jupyterlab/."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ARTIFACTS = Path(os.environ.get('COLPALI_MILVUS_ARTIFACTS', HERE.parent/'test-artifacts'))/'jupyterlab'
CHROMIUM = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
DRIVER = shutil.which('chromedriver')
Q1, Q2 = 'Where is ColBERT performance table?', 'end-to-end retrieval'
QUESTION = 'What does the ColBERT performance table compare?'
K, ASK_K = 4, 2

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason='headless Chromium is not installed: apt-get install chromium chromium-driver '
                              '(scripts/setup.sh does it) to run the JupyterLab test'),
    pytest.mark.timeout(600),
]

CELL = """import warnings; warnings.simplefilter('ignore')
from colpali_milvus.core import data_path
from colpali_milvus.index import ColPaliIndex
from colpali_milvus.ask import load_vlm
index = ColPaliIndex('lab.db', model={model!r})
index.add(data_path('sample.pdf'), progress=False)
ex = index.explore(k={k}, ncols=2, thumb_side=110, large_side=420,
                   vlm=load_vlm({vlm!r}, device='cpu', max_new_tokens=24), ask_k={ask_k})
ex"""

STATE_JS = """
const T = e => e ? e.textContent.replace(/\u00a0/g, ' ').trim() : '';
const imgs = Array.from(document.querySelectorAll('.jp-OutputArea img.widget-image'));
const sel = document.querySelector('.jp-OutputArea .widget-dropdown select');
return {n_img: imgs.length, srcs: imgs.map(i => i.src), painted: imgs.every(i => i.complete && i.naturalWidth > 0),
        html: Array.from(document.querySelectorAll('.jp-OutputArea .widget-html-content')).map(T),
        buttons: Array.from(document.querySelectorAll('.jp-OutputArea button.jupyter-button')).map(T),
        token: sel && sel.selectedOptions[0] ? T(sel.selectedOptions[0]) : null,
        n_options: sel ? sel.options.length : 0,
        cites: Array.from(document.querySelectorAll('.jp-OutputArea button[class*="cm-cite-"]')).map(T),
        links: Array.from(document.querySelectorAll('.jp-OutputArea a.cm-cite-link')).map(a => a.dataset.page),
        errors: Array.from(document.querySelectorAll(
            '.jp-OutputArea [data-mime-type="application/vnd.jupyter.stderr"]')).map(T)};
"""


def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory, tiny_model_dir):
    "(base URL, token, work folder, VLM folder) of a JupyterLab server with the notebook in its root folder."
    from colpali_milvus.ask import build_tiny_vlm
    work = tmp_path_factory.mktemp('lab')
    vlm = build_tiny_vlm('smolvlm', work/'tiny-vlm')
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'explorer', 'metadata': {}, 'outputs': [],
                     'source': CELL.format(model=str(tiny_model_dir), vlm=str(vlm), k=K, ask_k=ASK_K)}],
          'metadata': {'kernelspec': {'display_name': 'Python 3 (ipykernel)', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    (work/'ask.ipynb').write_text(json.dumps(nb))
    conf = work/'.jupyter'
    notif = conf/'lab'/'user-settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))  # no news toast over the page
    token, port = os.urandom(16).hex(), free_port()
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'JUPYTER_CONFIG_DIR': str(conf),
           'JUPYTER_RUNTIME_DIR': str(work/'.runtime'),
           'JUPYTERLAB_SETTINGS_DIR': str(conf/'lab'/'user-settings'),
           'JUPYTERLAB_WORKSPACES_DIR': str(conf/'lab'/'workspaces'),
           'PYTHONPATH': os.pathsep.join([str(HERE.parent), os.environ.get('PYTHONPATH', '')])}
    log = open(work/'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}',
                             '--ServerApp.port_retries=0']
                            + (['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else []),
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f'http://127.0.0.1:{port}'
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f'JupyterLab exited {proc.returncode}:\n{(work/"lab.log").read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2): break
            except OSError:
                if time.monotonic() - t0 > 120:
                    raise RuntimeError(f'JupyterLab did not start:\n{(work/"lab.log").read_text()[-3000:]}')
                time.sleep(0.5)
        yield url, token, work
    finally:
        proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()


@pytest.fixture(scope='module')
def truth(tmp_path_factory, tiny_model_dir, encoder, sample_pdf):
    "The same index built here: what each query must show."
    from colpali_milvus.index import ColPaliIndex
    d = tmp_path_factory.mktemp('truth')
    with ColPaliIndex(d/'t.db', model=str(tiny_model_dir), encoder=encoder, pages_dir=d/'pages') as idx:
        idx.add(sample_pdf, progress=False)
        return {q: [r.page for r in idx.search(q, k=K)] for q in (Q1, Q2, QUESTION)}


@pytest.fixture(scope='module')
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='chromium-profile-')
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', f'--user-data-dir={profile}',
              '--window-size=1500,1300', '--force-device-scale-factor=1'):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try: yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def state(drv)->dict: return drv.execute_script(STATE_JS)


def wait(drv, cond, what:str, timeout:float=120.)->dict:
    "Poll the page until `cond(state)` holds; fail with the last state (and a screenshot) otherwise."
    t0, s = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        s = state(drv)
        if s['errors']: break
        try:
            if cond(s): return s
        except (IndexError, KeyError, TypeError): pass
        time.sleep(0.3)
    drv.save_screenshot(str(ARTIFACTS/f'FAILED-{what.replace(" ", "_")}.png'))
    raise AssertionError(f'{what}: not shown within {timeout:.0f} s; the page shows {json.dumps(s)[:3000]}')


def shot(drv, name:str): drv.save_screenshot(str(ARTIFACTS/f'{name}.png'))


def captions(s:dict)->list:
    "Page numbers of the thumbnail captions, in the order shown ('#1 · 12.34 · sample.pdf · p. 3' -> 3)."
    return [int(h.rsplit('p. ', 1)[1]) for h in s['html'] if h.startswith('#') and 'sample.pdf · p. ' in h][:-1]


def large_caption(s:dict)->str:
    return [h for h in s['html'] if h.startswith('#') and 'sample.pdf · p. ' in h][-1]


def click_button(drv, text:str, nth:int=0):
    from selenium.webdriver.common.by import By
    bs = [b for b in drv.find_elements(By.CSS_SELECTOR, '.jp-OutputArea button.jupyter-button')
          if b.text.strip() == text]
    bs[nth].click()


def test_explorer_live_in_jupyterlab(lab, truth, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url, token, work = lab
    drv = browser
    drv.get(f'{url}/lab/tree/ask.ipynb?token={token}')
    t0 = time.monotonic()
    while not drv.find_elements(By.CSS_SELECTOR, '.jp-Notebook .jp-Cell .cm-content'):
        assert time.monotonic() - t0 < 120, 'JupyterLab did not open the notebook'
        time.sleep(0.5)
    time.sleep(2)  # the kernel starts with the notebook
    drv.find_element(By.CSS_SELECTOR, '.jp-Notebook .jp-Cell .cm-content').click()
    ActionChains(drv).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

    # the explorer appears, waiting for a query
    s = wait(drv, lambda s: 'Search' in s['buttons'] and 'Ask' in s['buttons']
             and any('Type a query' in h for h in s['html']),
             'explorer', timeout=240)
    shot(drv, '1-explorer')
    boxes = drv.find_elements(By.CSS_SELECTOR, '.jp-OutputArea .widget-text input')
    assert len(boxes) == 2, 'the search box and the question box'

    # type a query, press Search: the gallery shows that query's pages in rank order, the first one large
    boxes[0].send_keys(Q1); click_button(drv, 'Search')
    s = wait(drv, lambda s: captions(s) == truth[Q1] and s['painted'] and s['n_img'] == K + 1,
             'results of the first query')
    assert large_caption(s).startswith('#1 ') and any(f'{K} pages for {Q1}' in h for h in s['html'])
    shot(drv, '2-search')
    boxes[0].clear(); boxes[0].send_keys(Q2); click_button(drv, 'Search')
    s = wait(drv, lambda s: any(f'pages for {Q2}' in h for h in s['html']) and captions(s) == truth[Q2]
             and s['painted'],
             'results of the second query')
    shot(drv, '3-search-again')

    # click the third thumbnail: the large view and its heatmap change to that page
    before = s['srcs'][-1]
    click_button(drv, 'View page', 2)
    s = wait(drv, lambda s: large_caption(s).startswith('#3 ') and s['srcs'][-1] != before and s['painted'],
             'third page large')
    assert large_caption(s).endswith(f'p. {truth[Q2][2]}')
    shot(drv, '4-thumbnail')

    # pick a token: the map changes, and the legend names the token
    assert s['token'] == 'all tokens (MaxSim)' and s['n_options'] > 2
    before = s['srcs'][-1]
    Select(drv.find_element(By.CSS_SELECTOR, '.jp-OutputArea .widget-dropdown select')).select_by_index(1)
    s = wait(drv, lambda s: s['srcs'][-1] != before and s['token'] != 'all tokens (MaxSim)' and
             any(f'Token “{s["token"]}”' in h for h in s['html']), 'token map')
    shot(drv, '5-token')

    # Ask: the question is searched, the answer streams in, one citation button per page given
    boxes[1].send_keys(QUESTION); click_button(drv, 'Ask')
    s = wait(drv, lambda s: any('first token' in h for h in s['html']) and len(s['cites']) == ASK_K,
             'answer', timeout=180)
    assert captions(s) == truth[QUESTION], 'the gallery shows the pages the VLM was given'
    assert boxes[0].get_attribute('value') == QUESTION
    assert s['cites'] == [f'[{n}] p. {p}' for n, p in enumerate(truth[QUESTION][:ASK_K], 1)]
    assert any('TINY RANDOM VLM' in h for h in s['html'])
    answer = next(h for h in s['html'] if h and not h.startswith('#') and 'first token' not in h
                  and 'pages for' not in h and not h.startswith('All tokens') and not h.startswith('Token'))
    assert answer, 'an answer is shown'
    shot(drv, '6-answer')

    # a citation selects its page in the large view: a [n] marker in the answer if it has one, else its button
    assert large_caption(s).startswith('#1 ')
    before = s['srcs'][-1]
    if '2' in s['links']:
        drv.find_element(By.CSS_SELECTOR, '.jp-OutputArea a.cm-cite-link[data-page="2"]').click()
    else: drv.find_element(By.CSS_SELECTOR, '.jp-OutputArea button.cm-cite-2').click()
    s = wait(drv, lambda s: large_caption(s).startswith('#2 ') and s['srcs'][-1] != before and s['painted'],
             'cited page large')
    assert large_caption(s).endswith(f'p. {truth[QUESTION][1]}')
    shot(drv, '7-citation')
