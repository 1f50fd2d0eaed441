"""Ingestion benchmark: rasterizing PDF pages and encoding page images, ours against the seed notebook's code.

    python bench/ingest.py rasterize --pages 100 --reps 2        # seed convert_from_path vs colpali_milvus.rasterize
    python bench/ingest.py encode --pages 4                      # seed encode loop vs ColPaliEncoder fp32 / bf16 / auto

rasterize: a generated PDF (reportlab: text, a table and a drawn chart on every page). Seed = the notebook's
`convert_from_path(pdf)` at its defaults (200 dpi, PPM, one poppler process), timed alone and with the notebook's
`image.save(..., "PNG")` of every page; ours = `colpali_milvus.rasterize(pdf)` at its defaults (into a fresh folder each
time, so nothing is reused). Also timed: `direct_png`, an alternative in this file that has poppler write the PNGs
itself (`pdftoppm -png -scale-to 1024`, one process per CPU over page ranges), without PIL. Methods alternate, reps
times.

encode: a ColPali with the real widths of vidore/colpali-v1.2 (PaliGemma-3B: SigLIP so400m vision, width 1152,
MLP 4304, 16 heads, 448 px images, patch 14 -> 1024 image tokens; Gemma-2B text, hidden 2048, MLP 16384, 8 heads,
1 kv head, head dim 256; 128-d projection) but only --vision-layers (2) and --text-layers (2) of its 27 + 18 layers and
random weights: compute, not quality, is measured. The vocabulary is the real size (257,216) so that the seed's
forward pays for its logits as the real model does (our lean forward never computes them); the tokenizer is a small
offline one (as colpali_milvus.tiny builds). Seed = the notebook's loop: DataLoader batch 1, ColPali in bf16 on CPU,
`model(**batch)`. Ours = `ColPaliEncoder.encode_images` at batch_size 4 in fp32, bf16 and auto. Methods run one after
another on the same page images; one process, one model loaded at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
T0 = time.time()
def log(*a): print(f"[{time.time()-T0:7.1f}s]", *a, flush=True)

# ------------------------------------------------------------------------------------------------------ a 100-page PDF

def make_pdf(path:Path, n_pages:int=100, seed:int=0)->Path:
    "A letter-size PDF of `n_pages` pages, each with a heading, paragraphs, a grid table and a drawn line chart."
    import random

    from reportlab.graphics.charts.lineplots import LinePlot
    from reportlab.graphics.shapes import Drawing, Rect, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import inch
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
    rng, ss = random.Random(seed), getSampleStyleSheet()
    words = ('retrieval late interaction page image vector index latency recall query token patch model score '
             'table figure document embedding search ranking exact candidate pooling cluster memory disk').split()
    story = []
    for i in range(n_pages):
        story += [Paragraph(f"Section {i+1}: {' '.join(rng.sample(words, 4)).title()}", ss['Heading1'])]
        for _ in range(3):
            story += [Paragraph(' '.join(rng.choice(words) for _ in range(70)) + '.', ss['BodyText'])]
        rows = [['model', 'MRR@10', 'latency ms', 'memory GB']] + [
            [f"{rng.choice(words)}-{j}", f"{rng.uniform(15, 40):.1f}", str(rng.randint(10, 900)),
             f"{rng.uniform(1, 60):.1f}"] for j in range(6)]
        t = Table(rows, colWidths=[1.6*inch, 1*inch, 1*inch, 1*inch])
        t.setStyle(TableStyle([('GRID', (0, 0), (-1, -1), 0.5, colors.grey),
                               ('BACKGROUND', (0, 0), (-1, 0), colors.lightblue)]))
        d = Drawing(6*inch, 2.2*inch)
        lp = LinePlot(); lp.x, lp.y, lp.width, lp.height = 40, 20, 5*inch, 1.7*inch
        lp.data = [[(x, rng.uniform(0, 10)) for x in range(12)] for _ in range(3)]
        for k, c in enumerate((colors.red, colors.blue, colors.green)): lp.lines[k].strokeColor = c
        d.add(lp); d.add(Rect(5.2*inch, 1.6*inch, 0.6*inch, 0.4*inch, fillColor=colors.orange))
        d.add(String(40, 2.05*inch, f"Figure {i+1}: latency vs recall", fontSize=9))
        story += [Spacer(1, 6), t, Spacer(1, 6), d, PageBreak()]
    SimpleDocTemplate(str(path), pagesize=letter, invariant=1).build(story[:-1])
    return path

# ------------------------------------------------------------------------------------------------------ rasterize

def seed_convert(pdf, out:Path, save:bool):
    "The seed notebook: images = convert_from_path(pdf_path); image.save(f'pages/page_{i+1}.png', 'PNG')."
    from pdf2image import convert_from_path
    images = convert_from_path(pdf)
    if save:
        for i, image in enumerate(images): image.save(out/f"page_{i + 1}.png", "PNG")
    return len(images), images[0].size

def ours(pdf, out:Path):
    from colpali_milvus.rasterize import rasterize
    recs = rasterize(pdf, pages_dir=out)
    return len(recs), (recs[0].width, recs[0].height)

def direct_png(pdf, out:Path, size:int=1024, procs:int|None=None):
    "poppler writes the PNGs itself: one `pdftoppm -png -scale-to size` per CPU over consecutive page ranges."
    from pdf2image import pdfinfo_from_path
    n = pdfinfo_from_path(str(pdf))['Pages']
    procs = procs or min(4, os.cpu_count() or 1)
    step = -(-n // procs)
    def run(first):
        last = min(n, first + step - 1)
        subprocess.run(['pdftoppm', '-png', '-scale-to', str(size), '-f', str(first), '-l', str(last), str(pdf),
                        str(out/'page')], check=True)
    with ThreadPoolExecutor(procs) as ex: list(ex.map(run, range(1, n + 1, step)))
    files = sorted(out.glob('page-*.png'))
    from PIL import Image
    with Image.open(files[0]) as im: return len(files), im.size

def bench_rasterize(a):
    work = Path(tempfile.mkdtemp(prefix='ingest_'))
    pdf = make_pdf(work/'bench.pdf', a.pages)
    from pdf2image import pdfinfo_from_path
    assert pdfinfo_from_path(str(pdf))['Pages'] == a.pages
    log(f"{pdf}: {a.pages} pages, {pdf.stat().st_size/1e6:.1f} MB")
    methods = {'seed convert_from_path (200 dpi, 1 process)': lambda o: seed_convert(pdf, o, False),
               'seed convert_from_path + save PNG (the notebook)': lambda o: seed_convert(pdf, o, True),
               'ours rasterize() defaults': lambda o: ours(pdf, o),
               'direct_png: pdftoppm -png -scale-to 1024, 2 processes': lambda o: direct_png(pdf, o)}
    times = {m: [] for m in methods}; sizes = {}
    for r in range(a.reps):
        for m, f in methods.items():
            out = work/f"out_{r}_{len(times[m])}_{abs(hash(m))}"; out.mkdir()
            t = time.perf_counter(); n, size = f(out); times[m].append(time.perf_counter() - t)
            assert n == a.pages, (m, n)
            sizes[m] = size
            log(f"rep {r}: {m}: {times[m][-1]:.2f}s ({a.pages/times[m][-1]:.1f} pages/s), page {size[0]}x{size[1]}")
            shutil.rmtree(out)
    shutil.rmtree(work)
    base = min(times['seed convert_from_path (200 dpi, 1 process)'])
    base_save = min(times['seed convert_from_path + save PNG (the notebook)'])
    res = {m: {'best_s': min(t), 'times_s': t, 'pages_per_s': a.pages/min(t), 'page_px': sizes[m],
               'speedup_vs_seed_convert': base/min(t), 'speedup_vs_seed_with_save': base_save/min(t)}
           for m, t in times.items()}
    print(f"\n{a.pages}-page PDF, best of {a.reps} (methods alternated), {os.cpu_count()} CPUs\n")
    print("| method | page size px | pages/s | vs seed convert | vs seed convert + save |\n|---|---|---|---|---|")
    for m, r in res.items():
        print(f"| {m} | {r['page_px'][0]}×{r['page_px'][1]} | {r['pages_per_s']:.1f} | "
              f"{r['speedup_vs_seed_convert']:.2f}× | {r['speedup_vs_seed_with_save']:.2f}× |")
    return res

# ------------------------------------------------------------------------------------------------------ encode

REAL = dict(img=448, patch=14, vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16),
            text=dict(hidden_size=2048, intermediate_size=16384, num_attention_heads=8, num_key_value_heads=1,
                      head_dim=256),
            vocab=257216, proj=128)

def build_model(path:Path, vision_layers:int, text_layers:int, vocab:int=REAL['vocab'])->Path:
    "Save a ColPali with vidore/colpali-v1.2's widths, the given depths and random weights (bf16) into `path`."
    import torch
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import GemmaTokenizer, PaliGemmaConfig, SiglipImageProcessor

    from colpali_milvus.tiny import _tiny_vocab
    tok = GemmaTokenizer(vocab=_tiny_vocab(), merges=[])
    ip = SiglipImageProcessor(size={'height': REAL['img'], 'width': REAL['img']},
                              image_seq_length=(REAL['img']//REAL['patch'])**2)
    proc = ColPaliProcessor(image_processor=ip, tokenizer=tok)
    assert len(proc.tokenizer) <= vocab
    cfg = PaliGemmaConfig(
        vision_config=dict(model_type='siglip_vision_model', num_hidden_layers=vision_layers, image_size=REAL['img'],
                           patch_size=REAL['patch'], vision_use_head=False, **REAL['vision']),
        text_config=dict(model_type='gemma', num_hidden_layers=text_layers, vocab_size=vocab, **REAL['text']),
        image_token_index=proc.image_token_id, vocab_size=vocab, projection_dim=REAL['text']['hidden_size'],
        hidden_size=REAL['text']['hidden_size'])
    torch.manual_seed(0)
    model = ColPali(cfg).to(torch.bfloat16)
    model.save_pretrained(path); proc.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    log(f"built {path}: {vision_layers} vision + {text_layers} text layers, vocab {vocab}, {n/1e6:.0f}M parameters")
    return path

def seed_encode(model_dir, images):
    "The seed notebook's loop: bf16 on CPU, DataLoader batch 1, model(**batch) (ColPali.forward)."
    import torch
    from colpali_engine.models import ColPali
    from colpali_engine.models.paligemma.colpali.processing_colpali import ColPaliProcessor
    from colpali_engine.utils.torch_utils import ListDataset
    from torch.utils.data import DataLoader
    model = ColPali.from_pretrained(model_dir, torch_dtype=torch.bfloat16, device_map='cpu').eval()
    processor = ColPaliProcessor.from_pretrained(model_dir)
    def run():
        dataloader = DataLoader(dataset=ListDataset[str](images), batch_size=1, shuffle=False,
                                collate_fn=lambda x: processor.process_images(x))
        ds = []
        for batch_doc in dataloader:
            with torch.no_grad():
                batch_doc = {k: v.to(model.device) for k, v in batch_doc.items()}
                embeddings_doc = model(**batch_doc)
            ds.extend(list(torch.unbind(embeddings_doc.to("cpu"))))
        return [d.float().numpy() for d in ds]
    return model, run

def ours_encode(model_dir, images, dtype, batch_size):
    from colpali_milvus.encode import ColPaliEncoder
    enc = ColPaliEncoder(str(model_dir), device='cpu', dtype=dtype, batch_size=batch_size)
    return enc, lambda: enc.encode_images(images, progress=False)

def bench_encode(a):
    import gc

    import torch
    work = Path(tempfile.mkdtemp(prefix='ingest_enc_'))
    pdf = make_pdf(work/'p.pdf', a.pages)
    from pdf2image import convert_from_path
    images = [im.convert('RGB') for im in convert_from_path(str(pdf), size=1024)]
    model_dir = build_model(work/'model', a.vision_layers, a.text_layers, a.vocab)
    from colpali_milvus.encode import cpu_has_fast_bf16, pick_dtype
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cpu_has_fast_bf16={cpu_has_fast_bf16()}, "
        f"auto dtype on cpu = {pick_dtype('cpu')}")
    runs = [('seed loop (bf16, batch 1, model(**batch))', lambda: seed_encode(model_dir, images)),
            ('ours fp32', lambda: ours_encode(model_dir, images, 'float32', a.batch_size)),
            ('ours bf16', lambda: ours_encode(model_dir, images, 'bfloat16', a.batch_size)),
            ('ours auto', lambda: ours_encode(model_dir, images, None, a.batch_size))]
    res, outs = {}, {}
    for name, make in runs:
        obj, run = make()
        t = time.perf_counter(); out = run(); dt = time.perf_counter() - t
        outs[name] = out
        res[name] = {'s': dt, 'pages_per_s': len(images)/dt, 'dtype': str(getattr(obj, 'dtype', 'bfloat16'))}
        log(f"{name}: {dt:.1f}s for {len(images)} pages = {len(images)/dt:.3f} pages/s ({dt/len(images):.1f} s/page)")
        del obj, run; gc.collect()
    # same computation: our vectors against the seed's (both bf16)
    seed_v, ours_v = outs[runs[0][0]], outs['ours bf16']
    cos = min(float((s*o).sum(-1).min()) for s, o in zip(seed_v, ours_v))
    shapes = sorted({tuple(o.shape) for o in ours_v})
    # what the seed's forward pays for logits: one (1030, 2048) x (2048, vocab) product in bf16
    x, w = torch.randn(1030, 2048, dtype=torch.bfloat16), torch.randn(a.vocab, 2048, dtype=torch.bfloat16)
    with torch.no_grad():
        x @ w.T; t = time.perf_counter(); x @ w.T; logits_s = time.perf_counter() - t
    del x, w
    base = res[runs[0][0]]['s']
    print(f"\nencode: {a.pages} pages ({shapes} vectors each), {a.vision_layers} vision + {a.text_layers} text layers "
          f"at real width, vocab {a.vocab}; ours at batch_size {a.batch_size}\n")
    print("| method | dtype | s per page | pages/s | vs seed loop | vs ours fp32 |\n|---|---|---|---|---|---|")
    fp32 = res['ours fp32']['s']
    for name, r in res.items():
        print(f"| {name} | {r['dtype']} | {r['s']/a.pages:.2f} | {r['pages_per_s']:.3f} | {base/r['s']:.2f}× | "
              f"{fp32/r['s']:.2f}× |")
    print(f"\nmin cosine between the seed's and our bf16 vectors: {cos:.4f}; the seed's logits product alone "
          f"(bf16, 1030×2048 by 2048×{a.vocab}): {logits_s:.2f} s per page")
    shutil.rmtree(work)
    return {'results': res, 'min_cosine_seed_vs_ours_bf16': cos, 'logits_product_s_per_page': logits_s,
            'vision_layers': a.vision_layers, 'text_layers': a.text_layers, 'vocab': a.vocab, 'pages': a.pages,
            'batch_size': a.batch_size}

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='what', required=True)
    r = sub.add_parser('rasterize')
    r.add_argument('--pages', type=int, default=100); r.add_argument('--reps', type=int, default=2)
    e = sub.add_parser('encode')
    e.add_argument('--pages', type=int, default=4); e.add_argument('--batch-size', type=int, default=4)
    e.add_argument('--vision-layers', type=int, default=2); e.add_argument('--text-layers', type=int, default=2)
    e.add_argument('--vocab', type=int, default=REAL['vocab'])
    for p in (r, e): p.add_argument('--out', default='bench_out')
    a = ap.parse_args()
    res = bench_rasterize(a) if a.what == 'rasterize' else bench_encode(a)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/f'ingest_{a.what}.json').write_text(json.dumps(res, indent=1, default=str))
    log(f"-> {out/f'ingest_{a.what}.json'}")

if __name__ == '__main__': main()
