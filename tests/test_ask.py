"""`ColPaliIndex.ask` end to end in process: the sample PDF indexed with the tiny ColPali, answered by tiny random
VLMs of two families (Qwen2-VL, SmolVLM/Idefics3) loaded through the real `from_pretrained` path; and each bad
input's error."""
import json
import shutil
import warnings
from pathlib import Path

import pytest

from colpali_milvus.ask import (
    Answer,
    ContextTooSmallError,
    LocalVLM,
    PageImageMissingError,
    TinyVLMWarning,
    UnsupportedVLMError,
    build_messages,
    build_tiny_vlm,
    citations,
)
from colpali_milvus.core import ModelUnavailableError, SearchResult
from colpali_milvus.index import ColPaliIndex

Q = "Where is the ColBERT performance table?"
FAMILIES = ('qwen2-vl', 'smolvlm')

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope='module')
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny-vlms')
    return {f: build_tiny_vlm(f, root/f) for f in FAMILIES}


@pytest.fixture(scope='module')
def index(sample_index):
    yield from sample_index()


@pytest.mark.parametrize('family', FAMILIES)
def test_ask_answers_from_the_retrieved_pages(index, vlm_dirs, family):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ans = index.ask(Q, k=2, vlm=str(vlm_dirs[family]), max_new_tokens=8)
    assert any(issubclass(x.category, TinyVLMWarning) for x in w), 'the tiny VLM must be announced'
    assert isinstance(ans, Answer) and ans.is_tiny and ans.question == Q
    assert [p.page_id for p in ans.pages] == [r.page_id for r in index.search(Q, k=2)]
    assert ans.model == str(Path(vlm_dirs[family]).resolve())
    assert 0 < ans.image_tokens < ans.prompt_tokens
    t = ans.timings
    assert set(t) == {'retrieve', 'prepare', 'first_token', 'total'}
    assert 0 < t['retrieve'] and 0 < t['prepare'] and t['first_token'] <= t['total']
    assert all(1 <= n <= 2 for n in ans.cited) and ans.cited_pages == [ans.pages[n-1] for n in ans.cited]
    d = json.loads(json.dumps(ans.to_dict()))
    assert [p['n'] for p in d['pages']] == [1, 2] and d['pages'][0]['page'] == ans.pages[0].page


@pytest.mark.parametrize('family', FAMILIES)
def test_the_models_own_chat_template_shapes_the_prompt(vlm_dirs, family, sample_pdf, index):
    vlm = LocalVLM(str(vlm_dirs[family]), device='cpu', max_new_tokens=4)
    pages = index.search(Q, k=2)
    from colpali_milvus.ask import page_images
    inputs, n, n_img = vlm.prepare(build_messages(Q, page_images(pages)))
    text = vlm.processor.tokenizer.decode(inputs['input_ids'][0])
    assert text.rstrip().endswith({'qwen2-vl': '<|im_start|>assistant', 'smolvlm': 'Assistant:'}[family])
    assert text.index('[1]') < text.index('[2]') < text.index('Question: ' + Q)
    assert 'using only' in text and 'do not contain' in text
    # the page images are in the prompt as the processor's image tokens: one run of them per page (tiles for SmolVLM)
    assert n_img > 0 and n == inputs['input_ids'].shape[1]


def test_streaming_and_image_tokens_grow_with_k(index, vlm_dirs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        st = index.ask_stream(Q, k=1, vlm=str(vlm_dirs['qwen2-vl']), max_new_tokens=6)
        pieces = list(st)
        one = st.answer
        three = index.ask(Q, k=3, vlm=str(vlm_dirs['qwen2-vl']), max_new_tokens=6)
    assert ''.join(pieces).strip() == one.text and len(one.pages) == 1
    assert len(pieces) > 1, 'the answer streams piece by piece'
    assert one.timings['first_token'] <= one.timings['total']
    assert len(three.pages) == 3 and three.image_tokens > 2*one.image_tokens, (one.image_tokens, three.image_tokens)
    # the VLM is loaded once and reused: the second question did not load it again
    assert (index._vlm(str(vlm_dirs['qwen2-vl']), {'max_new_tokens': 6})
            is index._vlm(str(vlm_dirs['qwen2-vl']), {'max_new_tokens': 6}))


def test_markers_map_to_pages():
    pages = [SearchResult(i, 10-i, i, '/d/a.pdf', i, '') for i in (1, 2, 3)]
    text = 'The table is on one page [3], the method on another [1, 3]; nothing on [7].'
    a = Answer('q', text, pages, citations(text, 3), 'm')
    assert a.cited == [3, 1] and [p.page for p in a.cited_pages] == [3, 1]


def test_empty_question_and_bad_k(index, vlm_dirs):
    with pytest.raises(ValueError, match='question is empty'): index.ask('   ', vlm=str(vlm_dirs['smolvlm']))
    with pytest.raises(TypeError, match='must be a string'): index.ask(None, vlm=str(vlm_dirs['smolvlm']))
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match='k must be a positive int'):
            index.ask(Q, k=k, vlm=str(vlm_dirs['smolvlm']))
    with pytest.raises(ValueError, match=r'k=9 pages is more than a VLM is given \(max_pages=8\)'):
        index.ask(Q, k=9, vlm=str(vlm_dirs['smolvlm']))


def test_deleted_page_images(tmp_path, tiny_model_dir, encoder, sample_pdf, vlm_dirs):
    with ColPaliIndex(tmp_path/'i.db', model=str(tiny_model_dir), encoder=encoder, pages_dir=tmp_path/'pages') as idx:
        idx.add(sample_pdf, progress=False)
        shutil.rmtree(tmp_path/'pages')
        with pytest.raises(PageImageMissingError, match=r'is missing.*index\.remove'):
            idx.ask(Q, k=2, vlm=str(vlm_dirs['smolvlm']))


def test_a_model_that_cannot_read_images(tmp_path, index):
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)).save_pretrained(tmp_path/'llama')
    with pytest.raises(UnsupportedVLMError, match="'llama' model, not an image-text-to-text model"):
        index.ask(Q, vlm=str(tmp_path/'llama'))
    # a ColPali retriever is no VLM either
    with pytest.raises(UnsupportedVLMError, match='is a ColPali retrieval model'):
        index.ask(Q, vlm=index.model)


@pytest.mark.parametrize('family', FAMILIES)
def test_context_too_small_for_the_pages(index, vlm_dirs, family):
    with pytest.raises(ContextTooSmallError, match=r'reads at most \d+\. Ask with fewer pages'):
        index.ask(Q, k=3, vlm=str(vlm_dirs[family]), max_new_tokens=100_000)


def test_offline_model_says_what_to_do(index, capfd):
    with pytest.raises(ModelUnavailableError, match=r'(?s)cannot be loaded.*--vlm DIR'):
        index.ask(Q, vlm='HuggingFaceTB/SmolVLM-256M-Instruct')
    assert 'Traceback' not in capfd.readouterr().err
