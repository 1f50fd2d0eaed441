"""Build a corpus of hostile inputs (malformed, odd or unsafe files and folders) in a temporary folder, at test time.

`build_corpus(root, sample_pdf)` writes every case under `root/corpus` and returns the `Case`s: what each input is,
whether indexing it must succeed ('ok'), fail with a clear error ('error'), or be left out silently ('ignored'), and
a piece of text the error must contain. Nothing binary is committed: every file is generated here.
"""
from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pypdf import PdfReader, PdfWriter

__all__ = ['Case', 'build_corpus', 'make_pdf', 'png_header_only']


@dataclass
class Case:
    "One hostile input."
    name: str          # short id
    path: Path         # where it lies (inside the corpus folder, or given on its own)
    expect: str        # 'ok', 'error' or 'ignored'
    contains: str = '' # text the error message must contain ('error'), or None
    pages: int = 1     # pages it must give ('ok')
    explicit: bool = False  # passed to `add` on its own rather than found in the corpus folder


def make_pdf(path, n_pages:int=3, size=(612, 792), text:str='page'):
    "A PDF of `n_pages` pages of `size` points, each with a different line of text (reportlab)."
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path), pagesize=size, invariant=1)
    for i in range(1, n_pages + 1):
        c.setFont('Helvetica', 12 if min(size) > 40 else 4)
        c.drawString(min(20, size[0] / 4), min(size[1] / 2, 700), f'{text} {i}: {"lorem ipsum " * (i % 5 + 1)}')
        c.showPage()
    c.save()
    return Path(path)


def png_header_only(path, w:int, h:int):
    "A PNG whose header claims `w` x `h` pixels, with one tiny compressed row: a decompression bomb to any reader."
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * (w + 1)))
                           + chunk(b'IEND', b''))
    return Path(path)


def build_corpus(root, sample_pdf)->list[Case]:
    "Write the hostile corpus under `root/corpus` (plus a few inputs given on their own) and return its cases."
    root = Path(root); d = root / 'corpus'; d.mkdir(parents=True)
    sample = Path(sample_pdf).read_bytes()
    rnd = random.Random(4)
    cases = []
    def add(name, path, expect, contains='', pages=1, explicit=False):
        cases.append(Case(name, Path(path), expect, contains, pages, explicit))

    # --- PDFs that cannot be read
    (d / 'truncated.pdf').write_bytes(sample[:len(sample) // 3])
    add('truncated pdf', d / 'truncated.pdf', 'error', 'corrupt or truncated')
    (d / 'random.pdf').write_bytes(rnd.randbytes(4000))
    add('random bytes named .pdf', d / 'random.pdf', 'error', 'is not a PDF')
    w = PdfWriter(clone_from=PdfReader(sample_pdf)); w.encrypt(user_password='secret', owner_password='owner')
    w.write(d / 'encrypted.pdf'); add('encrypted pdf', d / 'encrypted.pdf', 'error', 'needs a password')
    PdfWriter().write(d / 'no_pages.pdf'); add('zero-page pdf', d / 'no_pages.pdf', 'error', 'has no pages')
    (d / 'zero.pdf').touch(); add('zero-byte file', d / 'zero.pdf', 'error', 'is empty (0 bytes)')
    (d / 'header_only.pdf').write_bytes(b'%PDF-1.7\n%%EOF\n')
    add('pdf header and nothing else', d / 'header_only.pdf', 'error', 'corrupt or truncated')
    Image.new('RGB', (20, 20)).save(d / 'png_inside.pdf', format='PNG')
    add('png named .pdf', d / 'png_inside.pdf', 'error', 'looks like a PNG image')
    (d / 'page.html.pdf').write_text('<!DOCTYPE html><html><body>saved web page</body></html>')
    add('html named .pdf', d / 'page.html.pdf', 'error', 'looks like an HTML page')
    (d / 'archive.pdf').write_bytes(b'PK\x03\x04' + rnd.randbytes(200))
    add('zip named .pdf', d / 'archive.pdf', 'error', 'ZIP archive')
    (d / 'notes.pdf').write_text('just some text\n' * 20)
    add('text named .pdf', d / 'notes.pdf', 'error', 'looks like a text file')

    # --- PDFs that are odd but fine
    make_pdf(d / 'huge_page.pdf', 1, size=(14400, 14400))
    add('huge page size (200 x 200 in)', d / 'huge_page.pdf', 'ok')
    make_pdf(d / 'sliver.pdf', 2, size=(14400, 20)); add('extreme aspect ratio page', d / 'sliver.pdf', 'ok', pages=2)
    sp = d / 'dir with spaces' / 'ünïcødé 文件'; sp.mkdir(parents=True)
    (sp / 'Résumé (v2) 论文.PDF').write_bytes(sample)
    add('path with spaces and unicode, .PDF', sp / 'Résumé (v2) 论文.PDF', 'ok', pages=6)

    # --- images: odd modes and broken ones
    Image.new('CMYK', (300, 200), (0, 200, 200, 0)).save(d / 'cmyk.jpg'); add('CMYK jpeg', d / 'cmyk.jpg', 'ok')
    Image.new('I;16', (200, 100), 40000).save(d / 'gray16.png'); add('16-bit greyscale png', d / 'gray16.png', 'ok')
    Image.new('RGBA', (120, 90), (255, 0, 0, 0)).save(d / 'alpha.png')
    add('RGBA png, fully transparent', d / 'alpha.png', 'ok')
    Image.new('1', (64, 64), 1).save(d / 'bilevel.tif'); add('1-bit tiff', d / 'bilevel.tif', 'ok')
    Image.new('RGB', (1, 1), 'red').save(d / 'one_pixel.png'); add('1 x 1 pixel image', d / 'one_pixel.png', 'ok')
    full = d / 'ok.png'; Image.effect_noise((200, 200), 50).convert('RGB').save(full)
    (d / 'truncated.png').write_bytes(full.read_bytes()[:300]); full.unlink()
    add('truncated png', d / 'truncated.png', 'error', 'is not a readable image')
    (d / 'random.jpg').write_bytes(b'\xff\xd8\xff\xe0' + rnd.randbytes(500))
    add('random bytes named .jpg', d / 'random.jpg', 'error', 'is not a readable image')
    png_header_only(d / 'bomb.png', 60000, 60000)
    add('decompression bomb png (60000 x 60000)', d / 'bomb.png', 'error', 'is not a readable image')

    # --- the file system
    (d / 'fifo.pdf').parent.mkdir(exist_ok=True); os.mkfifo(d / 'fifo.pdf')
    add('named pipe called .pdf', d / 'fifo.pdf', 'error', 'is not a regular file')
    (d / 'dangling.pdf').symlink_to(root / 'gone.pdf')
    add('broken symlink in a folder', d / 'dangling.pdf', 'error', 'does not exist')
    loop = d / 'loop'; loop.mkdir()
    (loop / 'back').symlink_to(d, target_is_directory=True); (loop / 'self').symlink_to(loop, target_is_directory=True)
    add('directory loop', loop, 'ignored')
    (d / 'io_error.pdf').symlink_to('/proc/self/mem')
    add('file whose read fails (EIO)', d / 'io_error.pdf', 'error', 'cannot be read')
    locked = d / 'unreadable.pdf'; locked.write_bytes(sample); locked.chmod(0)
    if os.geteuid() == 0: add('unreadable file (chmod 000; root reads it anyway)', locked, 'ok', pages=6)
    else: add('unreadable file (chmod 000)', locked, 'error', 'cannot be read')
    bad = os.fsencode(d) + b'/caf\xe9.pdf'  # a Latin-1 name: not valid UTF-8
    with open(bad, 'wb') as f: f.write(sample)
    add('file name that is not UTF-8', Path(os.fsdecode(bad)), 'error', 'not valid UTF-8')
    (d / '.hidden.pdf').write_bytes(b'garbage'); add('hidden file', d / '.hidden.pdf', 'ignored')
    (d / 'empty_folder').mkdir(); add('empty folder', d / 'empty_folder', 'ignored')
    (d / 'folder.pdf').mkdir(); add('folder named .pdf', d / 'folder.pdf', 'ignored')

    # --- inputs given on their own
    add('missing path', root / 'does-not-exist.pdf', 'error', 'does not exist', explicit=True)
    (root / 'broken_link.pdf').symlink_to(root / 'nowhere.pdf')
    add('broken symlink given on its own', root / 'broken_link.pdf', 'error', 'broken symbolic link', explicit=True)
    return cases
