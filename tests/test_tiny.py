"""Tests of colpali_milvus.tiny: a tiny random ColPali that loads through the real from_pretrained code path."""
import json

import pytest
import torch
from safetensors.torch import load_file

from colpali_milvus.tiny import (
    TINY_ALIASES,
    TINY_BANNER,
    TINY_BUILDERS,
    TINY_MARKER,
    build_tiny,
    build_tiny_colpali,
    is_tiny_random,
    tiny_model_path,
)


def test_files_and_marker(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert json.loads((tiny_model_dir / "config.json").read_text())[TINY_MARKER] is True
    assert "MEANINGLESS" in (tiny_model_dir / "README.md").read_text()
    assert is_tiny_random(tiny_model_dir) and is_tiny_random(str(tiny_model_dir / "config.json"))
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert size < 3e6, f"tiny model is {size/1e6:.1f} MB"


def test_loads_with_colpali_engine(tiny_model_dir):
    from colpali_engine.models import ColPali, ColPaliProcessor
    from PIL import Image
    model = ColPali.from_pretrained(tiny_model_dir, dtype=torch.float32, device_map="cpu").eval()
    proc = ColPaliProcessor.from_pretrained(tiny_model_dir)
    assert is_tiny_random(model.config)
    assert model.config.model_type == "paligemma" and model.dim == 128
    imgs = proc.process_images([Image.new("RGB", (70, 90), "white")])
    qs = proc.process_queries(["a query with ünicode ✓", "x"])  # any text tokenises; "x" is left-padded
    assert proc.image_seq_length == 16
    assert (imgs["input_ids"] == proc.image_token_id).sum() == 16
    with torch.inference_mode():
        e, q = model(**imgs), model(**qs)
    assert e.shape == (1, imgs["input_ids"].shape[1], 128)
    assert q.shape == (2, qs["input_ids"].shape[1], 128)
    assert not torch.isnan(e).any() and not torch.isnan(q).any()  # the random proj bias avoids NaN on padding
    assert qs["attention_mask"][1].sum() < qs["attention_mask"][0].sum()  # the padding really happened


def test_deterministic_seed(tmp_path, tiny_model_dir):
    w0 = load_file(tiny_model_dir / "model.safetensors")  # built with seed 0
    w_same = load_file(build_tiny_colpali(tmp_path / "a", seed=0) / "model.safetensors")
    w_other = load_file(build_tiny_colpali(tmp_path / "b", seed=1) / "model.safetensors")
    assert w0.keys() == w_same.keys() == w_other.keys()
    assert all(torch.equal(w0[k], w_same[k]) for k in w0)
    differing = [k for k in w0 if not torch.equal(w0[k], w_other[k])]
    assert "custom_text_proj.weight" in differing and "custom_text_proj.bias" in differing


def test_does_not_touch_global_rng(tmp_path):
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_colpali(tmp_path / "t", seed=7)
    assert torch.equal(torch.rand(3), a)


def test_refuses_to_overwrite_other_folders(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_tiny_colpali(d)
    assert (d / "notes.txt").read_text() == "keep me"
    build_tiny_colpali(tmp_path / "t")
    build_tiny_colpali(tmp_path / "t", seed=1)  # rebuilding a tiny model in place is fine


def test_is_tiny_random_negatives(tmp_path):
    assert not is_tiny_random("vidore/colpali-v1.2")
    assert not is_tiny_random(tmp_path)  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    assert not is_tiny_random(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_tiny_random(tmp_path)
    assert not is_tiny_random({}) and is_tiny_random({TINY_MARKER: True})


def test_banner_says_how_to_get_the_real_model():
    for s in ("MEANINGLESS", "huggingface-cli download", "vidore/colpali-v1.2",
              "vidore/colpaligemma-3b-pt-448-base", "--model", "HF_HUB_OFFLINE"):
        assert s in TINY_BANNER, s


# ---------------------------------------------------------------- the other families

CLASSES = {"colpali": ("ColPali", "ColPaliProcessor", "paligemma"),
           "colqwen2": ("ColQwen2", "ColQwen2Processor", "qwen2_vl"),
           "colqwen2.5": ("ColQwen2_5", "ColQwen2_5_Processor", "qwen2_5_vl"),
           "colsmol": ("ColIdefics3", "ColIdefics3Processor", "idefics3")}


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_family_files_and_loading(family, tiny_family_dir):
    import colpali_engine.models as M
    from PIL import Image
    d = tiny_family_dir(family)
    mcls, pcls, model_type = CLASSES[family]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg[TINY_MARKER] is True and cfg["model_type"] == model_type
    assert "MEANINGLESS" in (d / "README.md").read_text() and "Tiny random" in (d / "README.md").read_text()
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < 1.5e6, f"tiny {family} is {size/1e6:.1f} MB"
    model = getattr(M, mcls).from_pretrained(d, dtype=torch.float32, device_map="cpu").eval()
    proc = getattr(M, pcls).from_pretrained(d)
    assert is_tiny_random(model.config) and model.dim == 128
    imgs = proc.process_images([Image.new("RGB", (70, 90), "white"), Image.new("RGB", (200, 60), "white")])
    qs = proc.process_queries(["a query with ünicode ✓", "x"])
    assert qs["attention_mask"][1].sum() < qs["attention_mask"][0].sum()  # "x" is left-padded
    assert qs["attention_mask"][1, 0] == 0
    ids = proc.tokenizer("a ✓")["input_ids"]
    assert proc.tokenizer.decode(ids, skip_special_tokens=True).strip() == "a ✓"  # any text round-trips
    with torch.inference_mode():
        e, q = model(**imgs), model(**qs)
    assert e.shape[-1] == q.shape[-1] == 128
    assert not e[imgs["attention_mask"].bool()].isnan().any() and not q[qs["attention_mask"].bool()].isnan().any()


@pytest.mark.parametrize("family", ["colqwen2", "colqwen2.5", "colsmol"])
def test_family_deterministic_seed(family, tmp_path):
    w0 = load_file(build_tiny(family, tmp_path / "a", seed=0) / "model.safetensors")
    w_same = load_file(build_tiny(family, tmp_path / "b", seed=0) / "model.safetensors")
    w_other = load_file(build_tiny(family, tmp_path / "c", seed=1) / "model.safetensors")
    assert all(torch.equal(w0[k], w_same[k]) for k in w0)
    assert any(not torch.equal(w0[k], w_other[k]) for k in w0)


def test_build_tiny_and_aliases(tmp_path, monkeypatch):
    assert set(TINY_BUILDERS) == set(CLASSES) and set(TINY_ALIASES.values()) == set(CLASSES)
    with pytest.raises(ValueError, match="unknown tiny model family"):
        build_tiny("colbert", tmp_path / "x")
    d = tmp_path / "precious"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_tiny("colsmol", d)
    monkeypatch.setenv("COLPALI_MILVUS_CACHE", str(tmp_path / "cache"))
    p = tiny_model_path("tiny-colsmol")
    assert p == tmp_path / "cache" / "tiny-colsmol" and is_tiny_random(p)
    assert tiny_model_path("colsmol") == p and tiny_model_path() == tmp_path / "cache" / "tiny-colpali"
    with pytest.raises(ValueError, match="unknown tiny model"):
        tiny_model_path("tiny-colbert")
