"""ColPali-shaped synthetic corpora for benchmarks: unit-norm 128-d vectors, ~1030 per page, clustered like real pages.

A page = shared background patches (margins, white space: a few common directions), content patches showing 60-120
"words" drawn from the vocabularies of 1-3 topics, each word spread over several neighbouring patches (noisy copies of
the word's vector, as a word or figure spans several ColPali patches), and 6 near-constant special-token vectors.
A query = ~20 noisy words of one target page plus 5 near-constant prefix tokens, so the target page should win but
pages on the same topic (sharing part of its words) compete. Everything is seeded, so a corpus is reproducible."""
import numpy as np

DIM, N_VECTORS, N_SPECIAL, N_QUERY_WORDS, N_QUERY_SPECIAL = 128, 1030, 6, 20, 5

def _unit(x): return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

class Corpus:
    "Generator of pages and queries; `pages(start, stop)` makes pages in any order, identically each time."
    def __init__(self, n_pages:int, seed:int=0, n_topics:int|None=None, vocab:int=400, n_background:int=48):
        self.n_pages, self.seed = n_pages, seed
        rng = np.random.default_rng(seed)
        self.n_topics = n_topics or max(20, n_pages // 25)
        self.words = _unit(rng.standard_normal((self.n_topics, vocab, DIM)))
        self.background = _unit(rng.standard_normal((n_background, DIM)))
        self.special = _unit(rng.standard_normal((N_SPECIAL, DIM)))
        self.qspecial = _unit(rng.standard_normal((N_QUERY_SPECIAL, DIM)))

    def layout(self, i:int)->tuple:
        "What page i shows: (topics, n_background, topic of each content patch, word of each content patch)."
        r = np.random.default_rng([self.seed, 1, i])
        topics = r.choice(self.n_topics, size=r.integers(1, 4), replace=False)
        n_bg = int(r.integers(250, 600))
        n_content = N_VECTORS - N_SPECIAL - n_bg
        n_words = int(r.integers(60, 121))
        wt = topics[r.integers(0, len(topics), n_words)]                      # each shown word: its topic...
        ww = r.integers(0, self.words.shape[1], n_words)                      # ...and its index in the vocabulary
        which = np.sort(r.integers(0, n_words, n_content))                    # patches per word (neighbours)
        return topics, n_bg, wt[which], ww[which]

    def page(self, i:int)->np.ndarray:
        "Vectors of page i, (1030, 128) float32, unit norm."
        topics, n_bg, t, w = self.layout(i)
        r = np.random.default_rng([self.seed, 3, i])
        bg = (self.background[r.integers(0, len(self.background), n_bg)]
              + 0.3 * r.standard_normal((n_bg, DIM)) / np.sqrt(DIM))
        content = self.words[t, w] + 0.4 * r.standard_normal((len(t), DIM)) / np.sqrt(DIM)
        special = self.special + 0.05 * r.standard_normal((N_SPECIAL, DIM)) / np.sqrt(DIM)
        return _unit(np.concatenate([content, bg, special]))

    def pages(self, start:int, stop:int)->list: return [self.page(i) for i in range(start, stop)]

    def query(self, j:int)->tuple[np.ndarray, int]:
        "Query j: (vectors (25, 128), target page)."
        r = np.random.default_rng([self.seed, 2, j])
        target = int(r.integers(0, self.n_pages))
        _, _, t, w = self.layout(target)
        shown = np.unique(np.stack([t, w], 1), axis=0)
        pick_w = shown[r.choice(len(shown), N_QUERY_WORDS, replace=len(shown) < N_QUERY_WORDS)]
        words = self.words[pick_w[:, 0], pick_w[:, 1]] + 0.6 * r.standard_normal((N_QUERY_WORDS, DIM)) / np.sqrt(DIM)
        special = self.qspecial + 0.05 * r.standard_normal((N_QUERY_SPECIAL, DIM)) / np.sqrt(DIM)
        return _unit(np.concatenate([words, special])), target
