"""The evaluation harness: metrics against hand-computed values and trec_eval, and a labelled set on the sample PDF."""
import math
import random

import pytest

from colpali_milvus.core import SearchResult
from colpali_milvus.evaluate import Evaluation, check_page_keys, evaluate, score_results
from colpali_milvus.index import ColPaliIndex, page_id_for


def _results(keys):
    "Ranked SearchResults for page keys 'file#page' (files under /docs)."
    out = []
    for i, key in enumerate(keys):
        name, _, page = key.partition('#')
        out.append(SearchResult(rank=i + 1, score=float(-i), page_id=page_id_for(f'/docs/{name}', int(page or 1)),
                                source=f'/docs/{name}', page=int(page or 1)))
    return out


def test_graded_by_hand():
    "Relevance 3, 2, 1 for a, b, c; ranking c, x, a, b: DCG@3 = 1/log2(2) + 3/log2(4), IDCG@3 = 3 + 2/log2(3) + 1/2."
    ev = score_results({'q': _results(['c.pdf#1', 'x.pdf#1', 'a.pdf#1', 'b.pdf#1'])},
                       {'q': {'a.pdf#1': 3, 'b.pdf#1': 2, 'c.pdf#1': 1, 'x.pdf#1': 0}}, k=3)
    assert ev.per_query['q']['ndcg@3'] == pytest.approx((1 + 3 / 2) / (3 + 2 / math.log2(3) + 1 / 2))
    assert ev['recall@3'] == pytest.approx(2 / 3) and ev['mrr@3'] == 1.0
    miss = score_results({'q': _results(['x.pdf#1', 'y.pdf#1'])}, {'q': {'a.pdf#1': 1}}, k=2)
    assert miss.scores == {'ndcg@2': 0.0, 'recall@2': 0.0, 'mrr@2': 0.0}


def test_matches_trec_eval():
    """Random graded runs: every per-query value equals pytrec_eval's ndcg_cut / recall (recip_rank where the first hit
    is within k)."""
    pytrec_eval = pytest.importorskip('pytrec_eval')
    rng = random.Random(0)
    docs = [f'd{i}.pdf#{p}' for i in range(8) for p in (1, 2)]
    qrels = {f'q{j}': {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))} for j in range(40)}
    qrels = {q: j for q, j in qrels.items() if any(v > 0 for v in j.values())}
    runs = {q: rng.sample(docs, 10) for q in qrels}
    ev = score_results({q: _results(r) for q, r in runs.items()}, qrels, k=5)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {'ndcg_cut.5', 'recall.5', 'recip_rank'}).evaluate(
        {q: {d: 10.0 - i for i, d in enumerate(r[:5])} for q, r in runs.items()})
    for q in qrels:
        assert ev.per_query[q]['ndcg@5'] == pytest.approx(trec[q]['ndcg_cut_5'], abs=1e-9), q
        assert ev.per_query[q]['recall@5'] == pytest.approx(trec[q]['recall_5'], abs=1e-9), q
        assert ev.per_query[q]['mrr@5'] == pytest.approx(trec[q]['recip_rank'], abs=1e-9), q  # run cut at 5: same thing


# labelled set on the bundled sample PDF (see scripts/make_sample_pdf.py for what each page shows)
QUERIES = {'abstract': 'What is the abstract of the paper about?',
           'maxsim': 'How is the MaxSim relevance score computed?',
           'e2e': 'How does end-to-end retrieval with a vector index work?',
           'table': 'Where is the ColBERT performance table on MS MARCO?',
           'figure': 'Which figure plots latency against MRR@10?',
           'colpali': 'How does ColPali index pages as images?'}
QRELS = {'abstract': {'sample.pdf#1': 1}, 'maxsim': {'sample.pdf#2': 2, 'sample.pdf#3': 1}, 'e2e': {'sample.pdf#3': 1},
         'table': {'sample.pdf#4': 2, 'sample.pdf#5': 1}, 'figure': {'sample.pdf#5': 1}, 'colpali': {'sample.pdf#6': 1},
         'not-asked': {'sample.pdf#1': 1}}


@pytest.fixture(scope='module')
def sample_index(tiny_model_dir, sample_pdf, tmp_path_factory):
    d = tmp_path_factory.mktemp('eval')
    idx = ColPaliIndex(d / 'e.db', model=str(tiny_model_dir), pages_dir=d / 'pages')
    idx.add(sample_pdf, progress=False)
    yield idx
    idx.close()


def test_sample_pdf_end_to_end(sample_index, sample_pdf):
    "Tiny random model: rankings are noise, so this checks the harness, not quality."
    ev = evaluate(sample_index, QUERIES, QRELS, k=6)   # all 6 pages come back: every relevant page is found
    assert isinstance(ev, Evaluation) and set(ev.per_query) == set(QUERIES)
    assert all(len(r) == 6 for r in ev.results.values())
    assert ev['recall@6'] == 1.0 and all(v['mrr@6'] >= 1 / 6 and 0 < v['ndcg@6'] <= 1 for v in ev.per_query.values())
    # the scores follow from the rankings the index returned
    for q, res in ev.results.items():
        first = next(r.rank for r in res if f'sample.pdf#{r.page}' in QRELS[q])
        assert ev.per_query[q]['mrr@6'] == pytest.approx(1 / first)
    ev2 = evaluate(sample_index, QUERIES, QRELS, k=2)
    assert all(len(r) == 2 for r in ev2.results.values())
    for q, res in ev2.results.items():
        found = sum(f'sample.pdf#{r.page}' in QRELS[q] for r in res)
        assert ev2.per_query[q]['recall@2'] == pytest.approx(found / len(QRELS[q]))
    # the same judgements keyed by absolute path or by page id score the same
    src = str(sample_pdf.resolve())
    by_path = {q: {f'{src}#{k.split("#")[1]}': v for k, v in j.items()} for q, j in QRELS.items()}
    by_id = {q: {page_id_for(src, int(k.split('#')[1])): v for k, v in j.items()} for q, j in QRELS.items()}
    assert evaluate(sample_index, QUERIES, by_path, k=2).per_query == ev2.per_query
    assert evaluate(sample_index, QUERIES, by_id, k=2).per_query == ev2.per_query


def test_bad_labels(sample_index):
    with pytest.raises(ValueError, match=r"name no indexed page, e\.g\. \['sample\.pdf#7'\].*page numbers start at 1"):
        evaluate(sample_index, {'q': 'table'}, {'q': {'sample.pdf#7': 1}})
    with pytest.raises(ValueError, match='name no indexed page'):
        evaluate(sample_index, {'q': 'table'}, {'q': {'other.pdf#1': 1}})
    with pytest.raises(ValueError, match='no relevant page in qrels'):
        evaluate(sample_index, {'q': 'table', 'r': 'figure'}, {'q': {'sample.pdf#4': 1}})
    with pytest.raises(TypeError, match='queries must be a dict'):
        evaluate(sample_index, ['table'], {})
    check_page_keys({'q': {'sample.pdf#7': 1}}, {'/x/sample.pdf': 7})   # fine once the page exists
