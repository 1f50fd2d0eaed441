"""Index lifecycle: incremental add, no-op re-add, replace, remove, listing, metadata, filtered and document search,
streaming in committed chunks with resume, and the progress bar."""
from pathlib import Path

import pytest
from hostile import make_pdf
from PIL import Image

from colpali_milvus.core import DocumentResult, SourceNotFoundError
from colpali_milvus.index import ColPaliIndex, page_id_for

pytestmark = pytest.mark.timeout(600)




@pytest.fixture
def library(tmp_path):
    "A folder of three documents: two PDFs (one in a sub-folder) and an image."
    d = tmp_path / 'lib'; (d / 'sub').mkdir(parents=True)
    make_pdf(d / 'a.pdf', 3, text='alpha'); make_pdf(d / 'sub' / 'b.pdf', 4, text='beta')
    Image.new('RGB', (200, 150), 'white').save(d / 'c.png')
    return d


@pytest.fixture
def index(tmp_path, encoder):
    idx = ColPaliIndex(tmp_path / 'l.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    yield idx
    idx.close()


class Counter:
    "Counts the pages an encoder is asked to encode."
    def __init__(self, encoder, monkeypatch):
        self.n, real = 0, encoder.encode_images
        def counted(images, **kw): self.n += len(images); return real(images, **kw)
        monkeypatch.setattr(encoder, 'encode_images', counted)


def test_incremental_add_readd_replace_remove(index, library, encoder, monkeypatch, tmp_path):
    a, b, c = str(library / 'a.pdf'), str(library / 'sub' / 'b.pdf'), str(library / 'c.png')
    rep = index.add(library / 'a.pdf', progress=False)
    assert len(rep) == 3 and rep.indexed == {a: 3}
    rep = index.add(library, progress=False)  # a folder later: only the new files are encoded
    assert len(rep) == 5 and rep.indexed == {b: 4, c: 1} and rep.unchanged == [a]
    assert index.sources() == {a: 3, b: 4, c: 1}
    info = index.info()
    assert (info['model'], info['dim'], info['pages'], info['documents']) == (encoder.model_name, 128, 8, 3)
    # re-adding unchanged files renders and encodes nothing
    count = Counter(encoder, monkeypatch)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / 'pages').rglob('*')}
    assert index.add(library, progress=False) == [] and count.n == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'pages').rglob('*')} == stamps
    # a changed file replaces its pages; a shorter one loses the extra pages
    make_pdf(library / 'sub' / 'b.pdf', 2, text='beta, second edition')
    rep = index.add(library, progress=False)
    assert count.n == 2 and rep.indexed == {b: 2} and rep.removed == 2
    assert index.sources() == {a: 3, b: 2, c: 1}
    rows = index.retriever.page_rows([page_id_for(b, p) for p in (1, 2, 3)])
    assert set(rows) == {page_id_for(b, 1), page_id_for(b, 2)}
    # remove: a file, then a folder; the page images go too
    png = Path(rows[page_id_for(b, 1)]['image_path'])
    assert index.remove(b) == 2 and b not in index.sources() and not png.exists()
    with pytest.raises(SourceNotFoundError, match='is not indexed'): index.remove(b)
    with pytest.raises(SourceNotFoundError): index.remove([a, library / 'nope.pdf'])  # all or nothing
    assert index.sources() == {a: 3, c: 1}
    assert index.remove(library) == 4 and len(index) == 0 and index.sources() == {}
    assert index.retriever.all_page_ids() == [] and index.retriever.small() is None


def test_metadata_filters_and_documents(index, library, encoder, monkeypatch):
    a, b, c = str(library / 'a.pdf'), str(library / 'sub' / 'b.pdf'), str(library / 'c.png')
    index.add(library / 'a.pdf', metadata={'year': 2023, 'lang': 'en'}, progress=False)
    index.add(library / 'sub', metadata={'year': 2024, 'lang': 'fr'}, progress=False)
    index.add(library / 'c.png', progress=False)
    q = 'alpha beta'
    every = index.search(q, k=8)
    assert len(every) == 8
    score = {r.page_id: r.score for r in every}
    # restricted searches return only allowed pages, with the same exact scores
    for kw, want in [({'sources': a}, {a}), ({'sources': [library / 'sub']}, {b}), ({'where': {'year': 2024}}, {b}),
                     ({'where': {'lang': ['en', 'fr']}}, {a, b}), ({'where': {'year': lambda y: y < 2024}}, {a}),
                     ({'sources': library, 'where': {'lang': 'en'}}, {a})]:
        res = index.search(q, k=8, **kw)
        assert {r.source for r in res} == want, kw
        assert len(res) == sum(index.sources()[s] for s in want)
        for r in res: assert r.score == pytest.approx(score[r.page_id], rel=1e-5)
    assert index.search(q, where={'year': 1999}) == []
    # documents: each scored by its best page, best first
    docs = index.search(q, k=3, documents=True)
    assert all(isinstance(d, DocumentResult) for d in docs) and [d.rank for d in docs] == [1, 2, 3]
    assert {d.source for d in docs} == {a, b, c}
    for d in docs:
        assert d.score == pytest.approx(max(r.score for r in every if r.source == d.source))
        assert d.pages[0].score == d.score and all(p.source == d.source for p in d.pages)
    assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)
    assert len(index.search(q, k=1, documents=True)) == 1
    assert [d.source for d in index.search(q, k=5, documents=True, where={'lang': 'fr'})] == [b]
    # new metadata for an unchanged file is stored without encoding again
    count = Counter(encoder, monkeypatch)
    rep = index.add(library / 'a.pdf', metadata={'year': 2025}, progress=False)
    assert len(rep) == 0 and count.n == 0
    assert {r.source for r in index.search(q, k=8, where={'year': 2025})} == {a}
    assert index.search(q, k=8, sources=a)[0].metadata == {'year': 2025}
    assert index.search(q, k=8, sources=c)[0].metadata == {}


def test_streams_in_committed_chunks_and_resumes(index, tmp_path, encoder, monkeypatch, capsys):
    pdf = make_pdf(tmp_path / 'long.pdf', 20)
    r = index.retriever
    commits, real_add = [], None
    def spy(ids, vecs, meta):
        real_add(ids, vecs, meta); commits.append((len(ids), r.num_pages()))
    count = Counter(encoder, monkeypatch)
    index._ensure_collection(); real_add = r.add_pages
    monkeypatch.setattr(r, 'add_pages', spy)
    # interrupted in the third chunk: the first two are committed, no page of the third is
    calls = [0]
    real_encode = encoder.encode_images
    def flaky(images, **kw):
        calls[0] += 1
        if calls[0] == 3: raise KeyboardInterrupt
        return real_encode(images, **kw)
    monkeypatch.setattr(encoder, 'encode_images', flaky)
    with pytest.raises(KeyboardInterrupt): index.add(pdf, chunk=6, progress=False)
    assert commits == [(6, 6), (6, 12)] and len(index) == 12
    # run again: it resumes where it stopped (only the missing 8 pages are encoded), with a progress bar
    monkeypatch.setattr(encoder, 'encode_images', real_encode)
    count = Counter(encoder, monkeypatch)
    rep = index.add(pdf, chunk=6, progress=True)
    assert count.n == 8 and len(rep) == 8 and len(index) == 20
    assert [n for n, _ in commits[2:]] == [6, 2]
    err = capsys.readouterr().err
    assert 'indexing' in err and '8/8' in err
    # chunks are also the unit of rendering: pages are rendered only as they are needed
    src = str(pdf.resolve())
    pngs = {Path(x['image_path']).name for x in r.page_rows([page_id_for(src, p) for p in range(1, 21)]).values()}
    assert pngs == {f'page-{p:04d}.png' for p in range(1, 21)}
