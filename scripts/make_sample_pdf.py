"""Write colpali_milvus/data/sample.pdf, the small 6-page "paper" used by the demo and the tests.

The PDF is a short summary in the spirit of the ColBERT paper (late-interaction retrieval) plus ColPali:

1. title and abstract
2. method: late interaction and MaxSim
3. end-to-end retrieval: candidate generation with a vector index, then exact re-ranking
4. Table 1: ColBERT performance on MS MARCO (a real grid table: model, MRR@10, latency)
5. Figure 2: latency vs. MRR@10 (a vector scatter plot with axis labels and a caption)
6. ColPali: pages as images, and conclusions

Only reportlab's built-in Type 1 fonts are used (nothing embedded) and the document is written with
`invariant=1`, so re-running the script gives byte-identical output.

Usage: python scripts/make_sample_pdf.py [--out PATH]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Group, Line, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

DEFAULT_OUT = Path(__file__).resolve().parent.parent/'colpali_milvus'/'data'/'sample.pdf'

# MS MARCO passage ranking (dev), MRR@10 and query latency, as reported by Khattab & Zaharia (SIGIR 2020).
RESULTS = [  # (model, MRR@10, latency in ms, kind)
    ('BM25 (Anserini)',        18.7,    62, 'term'),
    ('doc2query',              21.5,    85, 'term'),
    ('DeepCT',                 24.3,    62, 'term'),
    ('docTTTTTquery',          27.7,    87, 'term'),
    ('fastText + ConvKNRM',    29.0,    28, 'neural'),
    ('BERT-base',              34.7, 10700, 'neural'),
    ('BERT-large',             36.5, 32900, 'neural'),
    ('ColBERT (re-rank)',      34.9,    61, 'late interaction'),
    ('ColBERT (end-to-end)',   36.0,   458, 'late interaction'),
]

TITLE = 'Late Interaction for Efficient Passage and Page Retrieval'
AUTHORS = 'A sample document for colpali-milvus (after Khattab &amp; Zaharia, SIGIR 2020, and Faysse et al., 2024)'

PAGES = {
'abstract': [
    ('h', 'Abstract'),
    ('p', 'Recent progress in natural language understanding has driven fast advances in information retrieval, '
          'largely thanks to fine-tuning deep language models for document ranking. While remarkably effective, '
          'ranking models based on these language models increase computational cost by orders of magnitude over '
          'prior approaches, in particular because they must feed each query-document pair through a massive '
          'neural network to compute a single relevance score.'),
    ('p', 'We present ColBERT, a ranking model that adapts deep language models for efficient retrieval. ColBERT '
          'introduces a <b>late interaction</b> architecture that independently encodes the query and the document '
          'with BERT and then employs a cheap yet powerful interaction step that models their fine-grained '
          'similarity. By delaying and yet retaining this fine-grained interaction, ColBERT can leverage the '
          'expressiveness of deep language models while gaining the ability to pre-compute document '
          'representations offline, considerably speeding up query processing.'),
    ('p', 'Beyond reducing the cost of re-ranking the documents retrieved by a traditional model, ColBERT\'s '
          'pruning-friendly interaction mechanism enables leveraging vector-similarity indexes for end-to-end '
          'retrieval directly from a large document collection. On MS MARCO, ColBERT is competitive with existing '
          'BERT-based models while executing two orders of magnitude faster and requiring four orders of '
          'magnitude fewer FLOPs per query.'),
    ('p', 'Keywords: neural ranking, late interaction, MaxSim, dense retrieval, multi-vector embeddings.'),
],
'method': [
    ('h', '2 Method: late interaction and MaxSim'),
    ('p', 'ColBERT encodes a query <i>q</i> into a bag of contextualized embeddings E<sub>q</sub>, one per query '
          'token, and a document <i>d</i> into a bag of embeddings E<sub>d</sub>, one per document token. Both '
          'encoders share one BERT model; a marker token tells queries and documents apart, and queries are padded '
          'with mask tokens (query augmentation) so the model can learn to expand them.'),
    ('p', 'Each embedding is projected by a linear layer to a small dimension (128 in the paper) and normalised to '
          'unit length, so that the dot product of two embeddings is their cosine similarity.'),
    ('p', 'The relevance score of <i>d</i> for <i>q</i> is the sum, over the query embeddings, of the maximum '
          'similarity to any document embedding:'),
    ('c', 'S(q, d) = &#931;<sub>i</sub> max<sub>j</sub> E<sub>q,i</sub> &#183; E<sub>d,j</sub>'),
    ('p', 'This <b>MaxSim</b> operator is the only interaction between query and document. Because documents are '
          'encoded without seeing the query, every document embedding can be computed once, offline, and stored. '
          'At query time only the short query is encoded, and scoring a document costs a small matrix product '
          'followed by a max over rows and a sum.'),
    ('p', 'Training uses triples (query, positive passage, negative passage) with a pairwise softmax cross-entropy '
          'loss over the two scores. Late interaction keeps most of the effectiveness of full cross-attention '
          'between query and document while making ranking cheap enough to run over millions of passages.'),
],
'e2e': [
    ('h', '3 End-to-end retrieval with ColBERT'),
    ('p', 'Re-ranking the top 1000 passages of BM25 limits recall to what the term-based model finds. Since MaxSim '
          'is a sum of maxima, a document can score highly only if some of its embeddings are close to the query '
          'embeddings, which makes end-to-end retrieval with a vector index possible.'),
    ('p', '<b>Stage 1, candidate generation.</b> All document embeddings are stored in a vector-similarity index '
          '(FAISS with an IVF-PQ index in the paper). For each of the N<sub>q</sub> query embeddings the index '
          'returns its k\' nearest document embeddings; the documents they belong to form the candidate set.'),
    ('p', '<b>Stage 2, re-ranking.</b> The candidates are scored exactly: their full bags of embeddings are loaded '
          'and the MaxSim score is computed against every query embedding. The final ranking is by this exact '
          'score, so approximate search only affects which documents are considered, not how they are ordered.'),
    ('p', 'With k\' = 1000 this pipeline retrieves from the 8.8M passages of MS MARCO in under half a second per '
          'query and improves MRR@10 and recall over re-ranking BM25 candidates. The same two-stage design works '
          'with any engine that can search vectors and return their owners, such as Milvus.'),
],
'colpali': [
    ('h', '6 ColPali: pages as images'),
    ('p', 'Document retrieval pipelines usually extract text from PDFs with OCR and layout detection, chunk it, and '
          'embed the chunks. Tables, figures, and page layout are lost or garbled along the way, and the '
          'extraction step is slow and brittle.'),
    ('p', 'ColPali skips extraction altogether: each page is rendered as an image and encoded by a vision language '
          'model (PaliGemma) into one embedding per image patch, 1030 vectors of 128 dimensions per page. Queries '
          'are encoded into one embedding per token, and pages are ranked with the same late-interaction MaxSim '
          'score as ColBERT. The page image itself is what is shown to the user or passed to a multimodal LLM.'),
    ('p', 'On the ViDoRe benchmark, which mixes text-heavy, table-heavy, and figure-heavy documents, ColPali '
          'outperforms text pipelines built on OCR and captioning while indexing pages faster.'),
    ('h', '7 Conclusions'),
    ('p', 'Late interaction separates encoding from matching: documents (or whole pages) are encoded once, '
          'queries are encoded at search time, and a cheap MaxSim step ranks them. Combined with a vector index '
          'for candidate generation and an exact re-ranking stage, it gives accurate retrieval at low latency, '
          'for passages of text as well as for pages seen as images.'),
],
}


def _styles():
    ss = getSampleStyleSheet()
    body = ParagraphStyle('body', parent=ss['BodyText'], fontName='Times-Roman', fontSize=11, leading=14.5,
                          spaceAfter=8, alignment=4)
    return dict(
        title=ParagraphStyle('title', parent=ss['Title'], fontName='Times-Bold', fontSize=20, leading=24),
        authors=ParagraphStyle('authors', parent=body, fontName='Times-Italic', alignment=1, spaceAfter=18),
        h=ParagraphStyle('h', parent=ss['Heading2'], fontName='Times-Bold', fontSize=14, spaceBefore=6),
        p=body,
        c=ParagraphStyle('c', parent=body, alignment=1, fontSize=12, spaceBefore=4, spaceAfter=12),
        caption=ParagraphStyle('caption', parent=body, fontName='Times-Italic', alignment=1, fontSize=10),
    )


def _flow(blocks, st):
    return [Paragraph(text, st[kind]) for kind, text in blocks]


def _table(st):
    "Page 4: Table 1 as a real grid table."
    rows = [['Model', 'Type', 'MRR@10 (Dev)', 'Latency (ms)']]
    rows += [[m, k, f'{mrr:.1f}', f'{ms:,}'] for m, mrr, ms, k in RESULTS]
    t = Table(rows, colWidths=[2.1*inch, 1.4*inch, 1.2*inch, 1.2*inch], hAlign='CENTER')
    t.setStyle(TableStyle([
        ('FONTNAME', (0, 0), (-1, 0), 'Helvetica-Bold'),
        ('FONTNAME', (0, 1), (-1, -1), 'Helvetica'),
        ('FONTSIZE', (0, 0), (-1, -1), 10),
        ('ALIGN', (2, 0), (-1, -1), 'RIGHT'),
        ('GRID', (0, 0), (-1, -1), 0.6, colors.black),
        ('BACKGROUND', (0, 0), (-1, 0), colors.lightgrey),
        ('BACKGROUND', (0, -2), (-1, -1), colors.Color(0.88, 0.93, 1.0)),
        ('TOPPADDING', (0, 0), (-1, -1), 4), ('BOTTOMPADDING', (0, 0), (-1, -1), 4),
    ]))
    return [Paragraph('4 Results', st['h']),
            Paragraph('<b>Table 1: ColBERT performance on MS MARCO</b>', st['c']), t, Spacer(1, 10),
            Paragraph('MRR@10 on the MS MARCO passage ranking development set and mean query latency, as reported '
                      'by Khattab and Zaharia (2020). Re-ranking models score the top-1000 BM25 passages; '
                      'ColBERT (end-to-end) retrieves directly from the full collection with a vector index.',
                      st['caption']),
            Spacer(1, 10),
            Paragraph('ColBERT re-ranking matches BERT-base in effectiveness (34.9 vs. 34.7 MRR@10) at 61 ms instead '
                      'of 10.7 seconds per query, a speed-up of more than 170 times. End-to-end retrieval reaches '
                      '36.0 MRR@10, close to BERT-large, at 458 ms.', st['p'])]


def _figure(st):
    "Page 5: Figure 2, a scatter plot of MRR@10 against latency (log scale), drawn as vector graphics."
    d = Drawing(6.2*inch, 4.2*inch)
    lp = LinePlot()
    lp.x, lp.y, lp.width, lp.height = 60, 55, 6.2*inch - 90, 4.2*inch - 85
    groups = ['term', 'neural', 'late interaction']
    lp.data = [[(math.log10(ms), mrr) for _, mrr, ms, k in RESULTS if k == g] for g in groups]
    for i, (c, m) in enumerate([(colors.grey, 'Square'), (colors.darkorange, 'Triangle'),
                                (colors.blue, 'FilledCircle')]):
        lp.lines[i].strokeColor = c
        lp.lines[i].strokeWidth = 0
        lp.lines[i].symbol = makeMarker(m, size=7, fillColor=c, strokeColor=c)
    lp.joinedLines = 0
    lp.xValueAxis.valueMin, lp.xValueAxis.valueMax = 1, 5
    lp.xValueAxis.valueSteps = [1, 2, 3, 4, 5]
    lp.xValueAxis.labelTextFormat = lambda v: f'{10**v:,.0f}'
    lp.yValueAxis.valueMin, lp.yValueAxis.valueMax, lp.yValueAxis.valueStep = 15, 40, 5
    lp.xValueAxis.labels.fontName = lp.yValueAxis.labels.fontName = 'Helvetica'
    lp.yValueAxis.visibleGrid = 1
    lp.yValueAxis.gridStrokeColor = colors.Color(0.85, 0.85, 0.85)
    d.add(lp)
    def sx(v): return lp.x + (v - 1)/4*lp.width
    def sy(v): return lp.y + (v - 15)/25*lp.height
    for m, mrr, ms, k in RESULTS:
        d.add(String(sx(math.log10(ms)) + 6, sy(mrr) + 3, m, fontName='Helvetica', fontSize=7))
    d.add(String(lp.x + lp.width/2, 15, 'Query latency (ms, log scale)', fontName='Helvetica', fontSize=10,
                 textAnchor='middle'))
    yl = String(0, 0, 'MRR@10', fontName='Helvetica', fontSize=10, textAnchor='middle')
    g = Group(yl); g.transform = (0, 1, -1, 0, 18, lp.y + lp.height/2)  # rotate 90 degrees
    d.add(g)
    for i, (gname, c) in enumerate(zip(groups, [colors.grey, colors.darkorange, colors.blue])):
        y = lp.y + 40 - 12*i  # bottom right: no data points there
        d.add(Line(lp.x + lp.width - 120, y + 3, lp.x + lp.width - 110, y + 3, strokeColor=c, strokeWidth=4))
        d.add(String(lp.x + lp.width - 105, y, gname, fontName='Helvetica', fontSize=8))
    return [Paragraph('5 Efficiency', st['h']),
            Paragraph('Figure 2 plots effectiveness against query latency for the models of Table 1. Late '
                      'interaction moves the trade-off curve: ColBERT reaches the effectiveness of BERT-based '
                      're-rankers at the latency of term-based models.', st['p']),
            Spacer(1, 8), d, Spacer(1, 6),
            Paragraph('Figure 2: latency vs. MRR@10 on MS MARCO (dev). The x axis is logarithmic.', st['caption'])]


def make_sample_pdf(out=DEFAULT_OUT) -> Path:
    "Write the sample PDF to `out` (deterministically) and return its path."
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    st = _styles()
    doc = SimpleDocTemplate(str(out), pagesize=letter, invariant=1, title=TITLE, author='colpali-milvus',
                            subject='Sample document for colpali-milvus', creator='scripts/make_sample_pdf.py',
                            leftMargin=inch, rightMargin=inch, topMargin=inch, bottomMargin=inch)
    story = [Paragraph(TITLE, st['title']), Paragraph(AUTHORS, st['authors'])]
    story += _flow(PAGES['abstract'], st) + [PageBreak()]
    story += _flow(PAGES['method'], st) + [PageBreak()]
    story += _flow(PAGES['e2e'], st) + [PageBreak()]
    story += _table(st) + [PageBreak()]
    story += _figure(st) + [PageBreak()]
    story += _flow(PAGES['colpali'], st)
    def _footer(canvas, doc):
        canvas.saveState(); canvas.setFont('Times-Roman', 9)
        canvas.drawCentredString(letter[0]/2, 0.6*inch, f'{doc.page}'); canvas.restoreState()
    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(DEFAULT_OUT), help=f'output PDF path (default: {DEFAULT_OUT})')
    p = make_sample_pdf(ap.parse_args().out)
    print(f'wrote {p} ({p.stat().st_size:,} bytes)')
