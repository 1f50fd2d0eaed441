"""Shared pytest fixtures: the tiny random ColPali (built once per session) and the bundled sample PDF."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    "Path of a tiny randomly initialised ColPali + processor, saved with save_pretrained (not meaningful!)."
    from colpali_milvus.tiny import build_tiny_colpali
    return Path(build_tiny_colpali(tmp_path_factory.mktemp("tiny") / "tiny-colpali"))

@pytest.fixture(scope="session")
def sample_pdf():
    "The bundled sample PDF (text, a table and a figure)."
    from colpali_milvus.core import data_path
    p = data_path("sample.pdf")
    assert p.exists(), f"{p} is missing: run `python scripts/make_sample_pdf.py`"
    return p


TINY_FAMILIES = ("colpali", "colqwen2", "colqwen2.5", "colsmol")  # the families `colpali_milvus.tiny.build_tiny` makes


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """A function: family ('colpali', 'colqwen2', 'colqwen2.5', 'colsmol') -> folder of its tiny random model, built
    once per session."""
    from colpali_milvus.tiny import build_tiny
    root, built = tmp_path_factory.mktemp("tiny-families"), {}
    def get(family):
        if family not in built: built[family] = Path(build_tiny(family, root / family))
        return built[family]
    return get


@pytest.fixture(scope="session")
def encoder(tiny_model_dir):
    "A `ColPaliEncoder` on the tiny ColPali, on the CPU (loaded once per session; its randomness warning silenced)."
    import warnings

    from colpali_milvus.encode import ColPaliEncoder
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return ColPaliEncoder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, tiny_model_dir, encoder, sample_pdf):
    "A maker of indexes of the sample PDF with the tiny model, one per test module: `yield from sample_index()`."
    from colpali_milvus.index import ColPaliIndex

    def make():
        d = tmp_path_factory.mktemp("sample-index")
        idx = ColPaliIndex(d / "i.db", model=str(tiny_model_dir), encoder=encoder, pages_dir=d / "pages")
        idx.add(sample_pdf, progress=False)
        yield idx
        idx.close()
    return make
