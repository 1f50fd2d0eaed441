"""Tests of colpali_milvus.rasterize: page PNGs from PDFs and images, reuse, and clear errors for bad inputs."""
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter

from colpali_milvus.core import PageRecord, PDFError, PopplerMissingError, file_sha256
from colpali_milvus.rasterize import IMAGE_EXTS, find_inputs, pdf_page_count, rasterize, rasterize_image, rasterize_pdf


def files_under(d):
    "Every file under `d` with its modification time."
    return {p: p.stat().st_mtime_ns for p in Path(d).rglob('*') if p.is_file()}


def encrypted_copy(src, dest, user='user-pw', owner='owner-pw'):
    w = PdfWriter(clone_from=PdfReader(src)); w.encrypt(user_password=user, owner_password=owner); w.write(dest)
    return dest


# --- the sample PDF ------------------------------------------------------------------------------------------

def test_sample_pdf_pages(sample_pdf, tmp_path):
    recs = rasterize_pdf(sample_pdf, tmp_path/'pages')
    assert len(recs) == 6 and pdf_page_count(sample_pdf) == 6
    assert [r.page for r in recs] == [1, 2, 3, 4, 5, 6]
    sha = file_sha256(sample_pdf)
    for r in recs:
        assert isinstance(r, PageRecord)
        assert r.source == str(Path(sample_pdf).resolve()) and Path(r.source).is_absolute()
        p = Path(r.image_path)
        assert p.is_absolute() and p.exists() and p.name == f'page-{r.page:04d}.png'
        assert p.parent == (tmp_path/'pages'/f'sample-{sha[:12]}').resolve()
        assert r.sha256 == sha
        with Image.open(p) as im:
            assert im.format == 'PNG' and im.mode == 'RGB' and im.size == (r.width, r.height)
        assert max(r.width, r.height) == 1024
    assert r.width < r.height  # letter paper is portrait


@pytest.mark.parametrize('max_size', [448, 700])
def test_max_size(sample_pdf, tmp_path, max_size):
    recs = rasterize_pdf(sample_pdf, tmp_path, max_size=max_size)
    assert {max(r.width, r.height) for r in recs} == {max_size}


def test_dpi_renders_without_scaling(sample_pdf, tmp_path):
    r = rasterize_pdf(sample_pdf, tmp_path, dpi=50)[0]
    assert (r.width, r.height) == (425, 550)  # 8.5 x 11 in at 50 dpi


def test_pages_have_content(sample_pdf, tmp_path):
    "Pages are real renders: mostly white paper with dark text, and they differ from each other."
    recs = rasterize_pdf(sample_pdf, tmp_path, max_size=600)
    arrs = [np.asarray(Image.open(r.image_path).convert('L')) for r in recs]
    for a in arrs: assert 0.004 < (a < 128).mean() < 0.2 and np.median(a) == 255
    assert len({a.tobytes() for a in arrs}) == 6


def test_thread_count_gives_same_pixels(sample_pdf, tmp_path):
    one = rasterize_pdf(sample_pdf, tmp_path/'one', max_size=400, thread_count=1)
    three = rasterize_pdf(sample_pdf, tmp_path/'three', max_size=400, thread_count=3)
    assert len(one) == len(three) == 6   # the sample PDF has 6 pages
    for a, b in zip(one, three, strict=True):
        assert np.array_equal(np.asarray(Image.open(a.image_path)), np.asarray(Image.open(b.image_path)))


# --- reuse, stable names, atomic writes ----------------------------------------------------------------------

def test_rerun_reuses_pages(sample_pdf, tmp_path):
    first = rasterize(sample_pdf, tmp_path/'pages')
    before = files_under(tmp_path)
    again = rasterize(sample_pdf, tmp_path/'pages')
    assert again == first
    assert files_under(tmp_path) == before  # no new file, nothing rewritten


def test_changed_content_gets_new_folder(sample_pdf, tmp_path):
    doc = tmp_path/'doc.pdf'; shutil.copy(sample_pdf, doc)
    old = rasterize_pdf(doc, tmp_path/'pages')
    w = PdfWriter(clone_from=PdfReader(doc)); w.add_metadata({'/Title': 'edited'}); w.write(doc)
    new = rasterize_pdf(doc, tmp_path/'pages')
    old_dir, new_dir = Path(old[0].image_path).parent, Path(new[0].image_path).parent
    assert old_dir != new_dir and old_dir.name.startswith('doc-') and new_dir.name.startswith('doc-')
    assert new[0].sha256 == file_sha256(doc) != old[0].sha256
    assert len(list(new_dir.glob('page-*.png'))) == 6 and len(list(old_dir.glob('page-*.png'))) == 6


def test_missing_page_is_rerendered_alone(sample_pdf, tmp_path):
    recs = rasterize_pdf(sample_pdf, tmp_path)
    Path(recs[2].image_path).unlink()
    before = files_under(tmp_path)
    assert rasterize_pdf(sample_pdf, tmp_path) == recs
    after = files_under(tmp_path)
    assert Path(recs[2].image_path) in after
    assert {p: t for p, t in after.items() if p != Path(recs[2].image_path)} == before


def test_new_max_size_rerenders_in_place(sample_pdf, tmp_path):
    big = rasterize_pdf(sample_pdf, tmp_path)
    small = rasterize_pdf(sample_pdf, tmp_path, max_size=300)
    assert [r.image_path for r in small] == [r.image_path for r in big]
    assert {max(r.width, r.height) for r in small} == {300}
    assert {max(Image.open(r.image_path).size) for r in small} == {300}


def test_interrupted_save_leaves_no_partial_page(sample_pdf, tmp_path, monkeypatch):
    real_save = Image.Image.save
    calls = []
    def flaky_save(self, fp, *a, **kw):
        calls.append(1)
        if len(calls) == 3: fp.write(b'\x89PNG half a page'); raise OSError('disk full')
        return real_save(self, fp, *a, **kw)
    monkeypatch.setattr(Image.Image, 'save', flaky_save)
    with pytest.raises(OSError, match='disk full'): rasterize_pdf(sample_pdf, tmp_path, thread_count=1)
    monkeypatch.setattr(Image.Image, 'save', real_save)
    left = sorted(p.name for p in tmp_path.rglob('*') if p.is_file())
    assert not any(n.endswith('.tmp') for n in left)  # no temporary file left behind
    for p in tmp_path.rglob('page-*.png'): Image.open(p).load()  # every page there is complete
    recs = rasterize_pdf(sample_pdf, tmp_path)  # and the next run completes the set
    assert len(recs) == 6 and all(Path(r.image_path).exists() for r in recs)


def test_path_with_spaces_and_unicode(sample_pdf, tmp_path):
    d = tmp_path/'mes documents é'/'第一'; d.mkdir(parents=True)
    doc = d/'Résumé final (v2) 论文.pdf'; shutil.copy(sample_pdf, doc)
    recs = rasterize(d, tmp_path/'pages dir')
    assert len(recs) == 6 and recs[0].source == str(doc.resolve())
    folder = Path(recs[0].image_path).parent
    assert folder.name == f'Resume_final_v2-{file_sha256(doc)[:12]}'
    assert all(Path(r.image_path).exists() for r in recs)


# --- images ---------------------------------------------------------------------------------------------------

def test_image_cmyk(tmp_path):
    Image.new('CMYK', (3000, 1500), (0, 255, 255, 0)).save(tmp_path/'red.jpg')  # red, as CMYK
    r, = rasterize_image(tmp_path/'red.jpg', tmp_path/'pages')
    assert (r.page, r.width, r.height) == (1, 1024, 512)
    with Image.open(r.image_path) as im:
        assert im.format == 'PNG' and im.mode == 'RGB'
        red, g, b = im.getpixel((500, 250)); assert red > 200 and g < 60 and b < 60


def test_image_alpha_on_white(tmp_path):
    im = Image.new('RGBA', (64, 32), (0, 0, 0, 0)); im.paste((0, 0, 255, 255), (0, 0, 32, 32))
    im.save(tmp_path/'logo.png')
    r, = rasterize_image(tmp_path/'logo.png', tmp_path/'pages')
    assert (r.width, r.height) == (64, 32)  # small images are not enlarged
    with Image.open(r.image_path) as out:
        assert out.mode == 'RGB' and out.getpixel((48, 16)) == (255, 255, 255) and out.getpixel((8, 8)) == (0, 0, 255)


@pytest.mark.parametrize('mode', ['L', 'P', '1', 'I;16'])
def test_image_other_modes(tmp_path, mode):
    if mode == 'I;16': im = Image.fromarray(np.full((20, 40), 40000, dtype=np.uint16))  # 16-bit grey scan
    else: im = Image.new('L', (40, 20), 200).convert(mode)
    assert im.mode == mode
    im.save(tmp_path/'img.tif')
    r, = rasterize_image(tmp_path/'img.tif', tmp_path/'pages')
    with Image.open(r.image_path) as out:
        assert out.mode == 'RGB' and out.size == (40, 20)
        if mode == 'I;16': assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 >> 8, not clipped to white


def test_image_rerun_and_exts(tmp_path):
    assert '.png' in IMAGE_EXTS and '.jpg' in IMAGE_EXTS
    Image.new('RGB', (10, 10), 'green').save(tmp_path/'g.webp')
    a = rasterize(tmp_path/'g.webp', tmp_path/'pages'); before = files_under(tmp_path)
    assert rasterize(tmp_path/'g.webp', tmp_path/'pages') == a and files_under(tmp_path) == before


# --- folders --------------------------------------------------------------------------------------------------

def make_folder(root, sample_pdf):
    (root/'b'/'deep').mkdir(parents=True)
    shutil.copy(sample_pdf, root/'z.pdf')
    shutil.copy(sample_pdf, root/'b'/'deep'/'nested.PDF')
    Image.new('RGB', (100, 50), 'blue').save(root/'a.png')
    Image.new('RGB', (20, 20), 'red').save(root/'b'/'c.jpg')
    (root/'notes.txt').write_text('ignored')
    (root/'.hidden').mkdir(); shutil.copy(sample_pdf, root/'.hidden'/'x.pdf')
    return root


def test_folder_input(sample_pdf, tmp_path):
    root = make_folder(tmp_path/'in', sample_pdf)
    assert [p.relative_to(root.resolve()).as_posix() for p in find_inputs(root)] == \
        ['a.png', 'b/c.jpg', 'b/deep/nested.PDF', 'z.pdf']
    assert [p.name for p in find_inputs(str(root), recursive=False)] == ['a.png', 'z.pdf']
    recs = rasterize(root, tmp_path/'pages')
    assert [(Path(r.source).name, r.page) for r in recs] == \
        [('a.png', 1), ('c.jpg', 1)] + [('nested.PDF', i) for i in range(1, 7)] + [('z.pdf', i) for i in range(1, 7)]
    # identical content in two files: same hash, separate (stem-named) folders, both complete
    assert recs[2].sha256 == recs[-1].sha256 and Path(recs[2].image_path).parent != Path(recs[-1].image_path).parent


def test_pages_dir_inside_input_folder_is_not_reindexed(sample_pdf, tmp_path):
    shutil.copy(sample_pdf, tmp_path/'doc.pdf')
    first = rasterize(tmp_path, tmp_path/'pages')
    assert len(first) == 6
    assert rasterize(tmp_path, tmp_path/'pages') == first  # its own PNGs are not taken as inputs


@pytest.mark.timeout(20)
def test_symlink_loop_does_not_hang(sample_pdf, tmp_path):
    shutil.copy(sample_pdf, tmp_path/'doc.pdf')
    (tmp_path/'sub').mkdir(); (tmp_path/'sub'/'up').symlink_to(tmp_path, target_is_directory=True)
    (tmp_path/'sub'/'self').symlink_to(tmp_path/'sub', target_is_directory=True)
    assert find_inputs(tmp_path) == [(tmp_path/'doc.pdf').resolve()]


def test_list_of_paths_and_duplicates(sample_pdf, tmp_path):
    Image.new('RGB', (10, 10)).save(tmp_path/'i.png')
    got = find_inputs([tmp_path/'i.png', str(sample_pdf), sample_pdf, tmp_path])
    assert got == [(tmp_path/'i.png').resolve(), Path(sample_pdf).resolve()]
    recs = rasterize([sample_pdf, str(sample_pdf)], tmp_path/'pages')
    assert len(recs) == 6


def test_empty_folder_warns(tmp_path):
    (tmp_path/'empty').mkdir()
    with pytest.warns(UserWarning, match='contains no PDF or image'):
        assert rasterize(tmp_path/'empty', tmp_path/'pages') == []


# --- bad inputs -------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(PDFError, match='nope.pdf: does not exist'): find_inputs(tmp_path/'nope.pdf')
    with pytest.raises(PDFError, match='does not exist'): rasterize(tmp_path/'nope.pdf', tmp_path/'pages')
    with pytest.raises(PDFError, match='does not exist'): pdf_page_count(tmp_path/'nope.pdf')


def test_truncated_pdf(sample_pdf, tmp_path):
    data = Path(sample_pdf).read_bytes()
    for frac in (0.2, 0.5, 0.95):
        bad = tmp_path/f'trunc{frac}.pdf'; bad.write_bytes(data[:int(len(data)*frac)])
        with pytest.raises(PDFError, match='is corrupt or truncated') as e: rasterize_pdf(bad, tmp_path/'pages')
        assert e.value.path == str(bad) and 'Re-download' in str(e.value)
    assert not list((tmp_path/'pages').rglob('*.png'))


def test_random_bytes_named_pdf(tmp_path):
    bad = tmp_path/'random.pdf'; bad.write_bytes(random.Random(1).randbytes(5000))
    with pytest.raises(PDFError, match=r'random.pdf: is not a PDF .*binary data') as e: rasterize(bad, tmp_path/'pages')
    assert isinstance(e.value, ValueError)


def test_png_named_pdf_and_text_named_pdf(tmp_path):
    Image.new('RGB', (5, 5)).save(tmp_path/'x.png'); (tmp_path/'img.pdf').write_bytes((tmp_path/'x.png').read_bytes())
    with pytest.raises(PDFError, match='looks like a PNG image') as e: rasterize_pdf(tmp_path/'img.pdf', tmp_path/'p')
    assert 'real extension' in str(e.value)
    (tmp_path/'t.pdf').write_text('hello, I am text')
    with pytest.raises(PDFError, match='looks like a text file'): rasterize(tmp_path/'t.pdf', tmp_path/'p')


def test_zero_byte_file(tmp_path):
    (tmp_path/'empty.pdf').touch()
    with pytest.raises(PDFError, match=r'empty.pdf: is empty \(0 bytes\)'):
        rasterize(tmp_path/'empty.pdf', tmp_path/'p')
    (tmp_path/'empty.png').touch()
    with pytest.raises(PDFError, match='is empty'): rasterize(tmp_path/'empty.png', tmp_path/'p')


def test_encrypted_pdf(sample_pdf, tmp_path):
    enc = encrypted_copy(sample_pdf, tmp_path/'secret.pdf')
    assert PdfReader(enc).is_encrypted
    with pytest.raises(PDFError, match='secret.pdf: is encrypted and needs a password.*password=') as e:
        rasterize(enc, tmp_path/'pages')
    assert e.value.path == str(enc.resolve())
    with pytest.raises(PDFError, match='password given does not open it'):
        rasterize(enc, tmp_path/'pages', password='wrong')
    for pw in ('user-pw', 'owner-pw'):  # either password opens it
        recs = rasterize(enc, tmp_path/'pages', password=pw)
        assert len(recs) == 6 and {max(r.width, r.height) for r in recs} == {1024}
    assert pdf_page_count(enc, password='user-pw') == 6


def test_encrypted_pdf_without_user_password_opens(sample_pdf, tmp_path):
    enc = encrypted_copy(sample_pdf, tmp_path/'locked.pdf', user='', owner='owner-only')
    assert len(rasterize(enc, tmp_path/'pages')) == 6  # only editing is restricted: it renders


def test_encrypted_pages_look_like_plain_ones(sample_pdf, tmp_path):
    enc = encrypted_copy(sample_pdf, tmp_path/'secret.pdf')
    a = rasterize(sample_pdf, tmp_path/'a', max_size=200)[0]
    b = rasterize(enc, tmp_path/'b', max_size=200, password='user-pw')[0]
    assert np.array_equal(np.asarray(Image.open(a.image_path)), np.asarray(Image.open(b.image_path)))


def test_zero_page_pdf(tmp_path):
    PdfWriter().write(tmp_path/'nothing.pdf')
    with pytest.raises(PDFError, match='nothing.pdf: has no pages'): rasterize(tmp_path/'nothing.pdf', tmp_path/'p')
    with pytest.raises(PDFError, match='has no pages'): pdf_page_count(tmp_path/'nothing.pdf')


def test_unreadable_image(tmp_path):
    (tmp_path/'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(50))
    with pytest.raises(PDFError, match='broken.jpg: is not a readable image'):
        rasterize(tmp_path/'broken.jpg', tmp_path/'p')


def test_pdf_given_to_rasterize_image(sample_pdf, tmp_path):
    with pytest.raises(PDFError, match='is a PDF, not an image'): rasterize_image(sample_pdf, tmp_path)
    shutil.copy(sample_pdf, tmp_path/'really-a-pdf.png')  # rasterize goes by content: a PDF is a PDF
    assert len(rasterize(tmp_path/'really-a-pdf.png', tmp_path/'pages')) == 6


def test_bad_arguments(sample_pdf, tmp_path):
    with pytest.raises(ValueError, match='on_error'): rasterize(sample_pdf, tmp_path, on_error='ignore')
    with pytest.raises(ValueError, match='max_size'): rasterize(sample_pdf, tmp_path, max_size=0)
    with pytest.raises(ValueError, match='thread_count'): rasterize_pdf(sample_pdf, tmp_path, thread_count=0)


def test_poppler_missing(sample_pdf, tmp_path, monkeypatch):
    (tmp_path/'empty_bin').mkdir()
    monkeypatch.setenv('PATH', str(tmp_path/'empty_bin'))
    for f in (lambda: pdf_page_count(sample_pdf), lambda: rasterize_pdf(sample_pdf, tmp_path/'p'),
              lambda: rasterize(sample_pdf, tmp_path/'p', on_error='skip')):  # skip does not hide it
        with pytest.raises(PopplerMissingError) as e: f()
        msg = str(e.value)
        assert ('apt-get install -y poppler-utils' in msg and 'brew install poppler' in msg
                and 'conda install -c conda-forge poppler' in msg)
    Image.new('RGB', (8, 8)).save(tmp_path/'i.png')  # images need no poppler
    assert len(rasterize(tmp_path/'i.png', tmp_path/'p')) == 1


# --- on_error -----------------------------------------------------------------------------------------------------

def test_on_error_skip(sample_pdf, tmp_path):
    d = tmp_path/'in'; d.mkdir()
    shutil.copy(sample_pdf, d/'good.pdf')
    Image.new('RGB', (30, 30), 'white').save(d/'good.png')
    (d/'trunc.pdf').write_bytes(Path(sample_pdf).read_bytes()[:3000])
    (d/'random.pdf').write_bytes(random.Random(2).randbytes(2000))
    (d/'zero.pdf').touch()
    encrypted_copy(sample_pdf, d/'secret.pdf')
    PdfWriter().write(d/'nopages.pdf')
    (d/'notes.txt').write_text('ignored, no warning')
    inputs = [d, tmp_path/'missing.pdf']
    with pytest.raises(PDFError, match='nopages.pdf: has no pages'):  # the first bad file in sorted order
        rasterize(inputs, tmp_path/'pages')
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        recs = rasterize(inputs, tmp_path/'pages', on_error='skip')
    assert [(Path(r.source).name, r.page) for r in recs] == [('good.pdf', i) for i in range(1, 7)] + [('good.png', 1)]
    msgs = [str(w.message) for w in ws]
    assert len(msgs) == 6, msgs
    for name, why in [('trunc.pdf', 'corrupt or truncated'), ('random.pdf', 'is not a PDF'), ('zero.pdf', 'is empty'),
                      ('secret.pdf', 'encrypted'), ('nopages.pdf', 'has no pages'), ('missing.pdf', 'does not exist')]:
        assert any(name in m and why in m for m in msgs), (name, msgs)
    # with the password the encrypted file is indexed too
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        assert len(rasterize(inputs, tmp_path/'pages', on_error='skip', password='user-pw')) == 13


def test_poppler_draws_what_pdfium_cannot(tmp_path, sample_pdf, monkeypatch):
    "When PDFium fails on a PDF, poppler renders it: same pages, same sizes."
    import colpali_milvus.rasterize as R
    good = R.rasterize(sample_pdf, pages_dir=tmp_path / "pdfium")
    import pypdfium2
    def broken(*a, **k): raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).")
    monkeypatch.setattr(pypdfium2, "PdfDocument", broken)
    fallback = R.rasterize(sample_pdf, pages_dir=tmp_path / "poppler")
    assert [(r.page, r.width, r.height) for r in fallback] == [(r.page, r.width, r.height) for r in good]
    assert all(Path(r.image_path).exists() for r in fallback)
