"""Hostile input: a generated corpus of malformed files and folders, odd queries, bad vectors, odd names and metadata.

Each bad input gets a clear error that names it, the rest of the batch is indexed and reported, and nothing is
written outside the database and the pages folder.
"""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile import build_corpus

from colpali_milvus.core import AddReport, DimensionMismatchError, ModelMismatchError, PDFError, SourceNotFoundError
from colpali_milvus.index import ColPaliIndex

pytestmark = pytest.mark.timeout(600)




def snapshot(root):
    "Every path under `root` with its size and modification time (symlinks not followed)."
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def test_hostile_corpus(tmp_path, encoder, sample_pdf, monkeypatch):
    cases = build_corpus(tmp_path / 'in', sample_pdf)
    assert len(cases) >= 20
    work, cwd = tmp_path / 'work', tmp_path / 'cwd'
    work.mkdir(); cwd.mkdir(); monkeypatch.chdir(cwd)
    before = snapshot(tmp_path / 'in')
    idx = ColPaliIndex(work / 'h.db', encoder=encoder, pages_dir=work / 'pages')
    corpus = tmp_path / 'in' / 'corpus'
    inputs = [corpus] + [c.path for c in cases if c.explicit]
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        rep = idx.add(inputs, on_error='skip', progress=False)
    assert isinstance(rep, AddReport) and not rep.ok
    errors = '\n'.join(f'{k} => {v}' for k, v in rep.errors.items())
    stored = idx.sources()
    for c in cases:
        name = os.fsencode(c.path.name).decode('utf-8', 'backslashreplace')
        if c.expect == 'ok':
            src = str(c.path.resolve())
            assert stored.get(src) == c.pages, (c.name, stored, errors)
            assert rep.indexed.get(src) == c.pages
        elif c.expect == 'error':
            hits = [m for m in rep.errors.values() if c.contains in m]
            # the message names the file (its link target for a symlink into /proc)
            assert any(name in m or c.path.is_symlink() for m in hits), (c.name, c.contains, errors)
        else:
            assert not any(name in m for m in rep.errors.values()), (c.name, errors)
            assert not any(Path(s).name == c.path.name for s in stored), c.name
    n_err = sum(c.expect == 'error' for c in cases)
    assert len(rep.errors) == n_err, errors
    assert sum('Skipping' in str(w.message) for w in ws) == n_err
    assert len(idx) == sum(c.pages for c in cases if c.expect == 'ok') == len(rep)
    # every error is one line that starts with the path and says what is wrong (no raw exception dumps)
    for m in rep.errors.values(): assert 'Traceback' not in m and len(m) < 600
    # search works over what was indexed
    assert len(idx.search('lorem ipsum', k=3)) == 3
    idx.close()
    # nothing was written outside the given paths: the inputs are untouched, the working directory stays empty,
    # and everything new lies under the database or the pages folder
    assert snapshot(tmp_path / 'in') == before
    assert list(cwd.iterdir()) == []
    assert {p.name for p in work.iterdir()} == {'h.db', 'pages'}


def test_first_bad_file_raises(tmp_path, encoder, sample_pdf):
    cases = build_corpus(tmp_path / 'in', sample_pdf)
    trunc = next(c.path for c in cases if c.name == 'truncated pdf')
    idx = ColPaliIndex(tmp_path / 'r.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    with pytest.raises(PDFError, match='truncated.pdf: is corrupt or truncated'):
        idx.add([sample_pdf, trunc], progress=False)
    assert idx.sources() == {}  # files are checked before anything is encoded
    idx.close()


def test_hostile_queries(tmp_path, encoder, sample_pdf):
    idx = ColPaliIndex(tmp_path / 'q.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    idx.add(sample_pdf, progress=False)
    for q, msg in [('', 'query is empty'), ('   \n\t', 'query is empty'), ('x' * 10_000, 'query is too long'),
                   (['fine', ''], 'query is empty')]:
        with pytest.raises(ValueError, match=msg): idx.search(q)
    with pytest.raises(TypeError, match='must be a string or a list'): idx.search(None)
    with pytest.raises(TypeError, match='must be a string'): idx.search([b'bytes'])
    for k in (0, -1, 2.5, True, '3'):
        with pytest.raises(ValueError, match='k must be a positive int'): idx.search('table', k=k)
    with pytest.raises(TypeError, match='where must be a dict'): idx.search('table', where='year=2024')
    with pytest.raises(SourceNotFoundError, match='is not indexed'): idx.search('table', sources='/nope.pdf')
    # long but readable queries and odd characters are fine
    assert len(idx.search('ColBERT ' * 200, k=2)) == 2
    assert len(idx.search('表 ✓ \x00 <script>', k=2)) == 2
    idx.close()


def test_bad_vectors_fail_their_file_only(tmp_path, encoder, sample_pdf, monkeypatch):
    "An encoder that returns NaN, wrong-dim or empty vectors for one file: that file fails clearly, the others index."
    from PIL import Image
    files = []
    for name in ('nan', 'dim', 'empty', 'good'):
        Image.new('RGB', (64, 48), 'white').save(tmp_path / f'{name}.png'); files.append(tmp_path / f'{name}.png')
    real = encoder.encode_images
    def broken(images, **kw):
        out = real(images, **kw)
        for i, p in enumerate(images):
            stem = Path(p).parent.name.split('-')[0]
            if stem == 'nan': out[i][0, 0] = np.nan
            elif stem == 'dim': out[i] = out[i][:, :64]
            elif stem == 'empty': out[i] = out[i][:0]
        return out
    idx = ColPaliIndex(tmp_path / 'v.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    monkeypatch.setattr(encoder, 'encode_images', broken)
    with pytest.warns(UserWarning):
        rep = idx.add(files, on_error='skip', progress=False)
    msgs = {Path(k).name: v for k, v in rep.errors.items()}
    assert ('NaN' in msgs['nan.png'] and 'dimension 64, expected 128' in msgs['dim.png']
            and '0 vectors' in msgs['empty.png'])
    assert set(idx.sources()) == {str(tmp_path / 'good.png')}
    monkeypatch.setattr(encoder, 'encode_images', real)
    assert set(idx.add(files, progress=False).indexed) == {str(tmp_path / f'{n}.png') for n in ('nan', 'dim', 'empty')}
    idx.close()


@pytest.mark.parametrize('name', ['', 'my papers', 'a-b', '1st', 'résumé', '../../etc', 'x' * 300, 'a/b', 'db.name'])
def test_odd_collection_names(tmp_path, name):
    with pytest.raises(ValueError, match='is not valid'):
        ColPaliIndex(tmp_path / 'n.db', collection=name, model='tiny')
    assert list(tmp_path.iterdir()) == []  # refused before the database is opened: nothing written


def test_bad_metadata_and_arguments(tmp_path, encoder, sample_pdf):
    idx = ColPaliIndex(tmp_path / 'm.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    for meta, err, msg in [(['a'], TypeError, 'must be a dict'), ({1: 'a'}, TypeError, 'string keys'),
                           ({'s': {1}}, ValueError, 'only JSON values'),
                           ({'x': float('inf')}, ValueError, 'only JSON values')]:
        with pytest.raises(err, match=msg): idx.add(sample_pdf, metadata=meta, progress=False)
    with pytest.raises(ValueError, match="on_error must be"): idx.add(sample_pdf, on_error='ignore')
    assert len(idx) == 0 and not (tmp_path / 'pages').exists()
    idx.add(sample_pdf, progress=False)
    with pytest.raises(ModelMismatchError, match='was built with model'):  # another model on a collection that has one
        ColPaliIndex(tmp_path / 'm.db', model='tiny')
    idx.close()


def test_wrong_dim_encoder_is_refused(tmp_path, encoder, sample_pdf):
    idx = ColPaliIndex(tmp_path / 'd.db', encoder=encoder, pages_dir=tmp_path / 'pages')
    idx.add(sample_pdf, progress=False)
    assert idx.retriever.properties()['colpali_milvus.dim'] == '128' and idx.info()['dim'] == 128
    class Other:  # an encoder of the same name that makes 64-d vectors
        model_name, dim = encoder.model_name, 64
    with pytest.raises(DimensionMismatchError, match='holds 128-d vectors but model .* makes 64-d'):
        ColPaliIndex(tmp_path / 'd.db', encoder=Other())
    idx.close()
