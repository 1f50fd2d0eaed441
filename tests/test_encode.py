"""Tests of colpali_milvus.encode on the tiny random ColPali: devices, dtypes, offline-safe model resolution, encoding."""
import json
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import colpali_milvus.encode as E
from colpali_milvus.core import ColPaliMilvusError, ModelUnavailableError, PageRecord, PDFError
from colpali_milvus.rasterize import to_rgb
from colpali_milvus.encode import (ColPaliEncoder, EncoderOptionError, TinyModelWarning, UnsupportedModelError,
                                   cpu_has_fast_bf16, hub_reachable, pick_device, pick_dtype, resolve_model)


@pytest.fixture(scope="module")
def enc(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyModelWarning)
        return ColPaliEncoder(tiny_model_dir, device="cpu", dtype="float32")


def _pages():
    rng = np.random.default_rng(0)
    return [Image.new("RGB", (85, 110), "white"),
            Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (60, 200, 3), dtype=np.uint8))]


QUERIES = ["What was the total revenue in 2023 according to the table?", "hi", "ünïcødé query ✓"]


@pytest.fixture
def offline(monkeypatch):
    "HF_HUB_OFFLINE=1 for the test."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def online_but_unreachable(monkeypatch):
    "HF_HUB_OFFLINE unset everywhere; skips the test if the hub actually answers."
    import huggingface_hub.constants as C
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    E._probe_cache.clear()
    if hub_reachable(timeout=3.0):
        pytest.skip("the Hugging Face hub is reachable from here")
    yield
    E._probe_cache.clear()


# ---------------------------------------------------------------- encoder basics

def test_encoder_attributes(enc, tiny_model_dir):
    assert enc.model_name == str(tiny_model_dir)
    assert enc.path == str(tiny_model_dir.resolve())
    assert (enc.device, enc.dtype, enc.dim, enc.is_tiny) == ("cpu", torch.float32, 128, True)
    assert (enc.family, enc.model_type) == ("ColPali", "paligemma")
    assert not enc.model.training
    assert "TINY RANDOM" in repr(enc)


def test_tiny_model_warns(tiny_model_dir):
    with pytest.warns(TinyModelWarning, match="meaningless"):
        ColPaliEncoder(tiny_model_dir, device="cpu")


def test_tiny_auto_dtype_is_float32_even_with_fast_bf16(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(E, "cpu_has_fast_bf16", lambda *a: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyModelWarning)
        assert ColPaliEncoder(tiny_model_dir, device="cpu").dtype == torch.float32
        e16 = ColPaliEncoder(tiny_model_dir, device="cpu", dtype="bf16")
    assert e16.dtype == torch.bfloat16 and e16.model.dtype == torch.bfloat16
    v = e16.encode_queries("hi")[0]
    assert v.dtype == np.float32 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=2e-2)


def test_image_shapes_dtype_unit_norm(enc):
    vecs = enc.encode_images(_pages(), progress=False)
    assert len(vecs) == 3
    ids = enc.processor.process_images(_pages()[:1])["input_ids"][0]
    n = len(ids)  # 16 image tokens + '<bos><bos>Describe the image.\n' (transformers adds a 2nd <bos>)
    assert (ids == enc.processor.image_token_id).sum() == 16 and n > 16
    for v in vecs:
        assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (n, 128)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])  # different pages, different vectors


def test_query_shapes_dtype_unit_norm_and_padding_stripped(enc):
    vecs = enc.encode_queries(QUERIES)
    ids = [enc.processor.process_queries([q])["input_ids"][0] for q in QUERIES]  # each alone: no padding
    assert [v.shape for v in vecs] == [(len(i), 128) for i in ids]
    assert vecs[1].shape[0] < vecs[0].shape[0]
    for v in vecs:
        assert v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)  # no zero (padding) rows left


def test_short_query_same_alone_or_batched_with_long_one(enc):
    batched = enc.encode_queries(["hi", QUERIES[0]], batch_size=2)
    alone = enc.encode_queries("hi")
    assert batched[0].shape == alone[0].shape
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


def test_empty_and_single_queries(enc):
    assert enc.encode_queries([]) == []
    (v,) = enc.encode_queries("")  # '<bos>' + 10 '<pad>' query-augmentation tokens: still encoded
    assert v.shape == (11, 128) and np.isfinite(v).all()
    assert len(enc.encode_queries("single string")) == 1
    with pytest.raises(TypeError, match="strings"):
        enc.encode_queries(["ok", 3])


def test_batch_size_does_not_change_vectors(enc):
    pages = _pages()
    a = enc.encode_images(pages, batch_size=1, progress=False)
    b = enc.encode_images(pages, batch_size=3, progress=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)
    qa, qb = enc.encode_queries(QUERIES, batch_size=1), enc.encode_queries(QUERIES, batch_size=3)
    for x, y in zip(qa, qb):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_bad_batch_size(enc):
    for bs in (0, -1, 1.5):
        with pytest.raises(EncoderOptionError, match="batch_size"):
            enc.encode_queries("x", batch_size=bs)


# ---------------------------------------------------------------- the lean forward equals colpali-engine's

def test_fast_forward_equals_colpali_forward_images(enc):
    batch = enc.processor.process_images(_pages())
    assert "labels" in batch  # what we drop: colpali-engine would compute an LM loss with it
    with torch.inference_mode():
        ours, theirs = enc._forward(batch), enc.model(**batch)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_fast_forward_equals_colpali_forward_queries(enc):
    with torch.inference_mode():
        for q in QUERIES:  # a query alone, exactly as colpali-engine batches it
            b = enc.processor.process_queries([q])
            torch.testing.assert_close(enc._forward(b), enc.model(**b), atol=1e-5, rtol=0)
        b = enc.processor.process_queries(QUERIES)  # padded batch: same inputs (all-prompt token_type_ids)
        tt = torch.zeros_like(b["input_ids"])
        torch.testing.assert_close(enc._forward(b), enc.model(**b, token_type_ids=tt), atol=1e-5, rtol=0)


def test_fast_forward_does_not_call_lm_head(enc, monkeypatch):
    lm_head = enc.model.model.lm_head
    def boom(*a, **k): raise AssertionError("lm_head was called")
    monkeypatch.setattr(lm_head, "forward", boom)
    enc.encode_queries("hi")
    enc.encode_images(_pages()[:1], progress=False)


# ---------------------------------------------------------------- inputs

def test_image_inputs_paths_records_and_modes(enc, tmp_path):
    rgb = _pages()[1]
    ref = enc.encode_images(rgb, progress=False)[0]
    rgb.save(tmp_path / "p.png")
    np.testing.assert_allclose(enc.encode_images(tmp_path / "p.png", progress=False)[0], ref, atol=1e-6)
    np.testing.assert_allclose(enc.encode_images(str(tmp_path / "p.png"), progress=False)[0], ref, atol=1e-6)
    rec = PageRecord(str(tmp_path / "x.pdf"), 1, str(tmp_path / "p.png"))
    np.testing.assert_allclose(enc.encode_images([rec], progress=False)[0], ref, atol=1e-6)
    opaque = rgb.convert("RGBA")
    np.testing.assert_allclose(enc.encode_images(opaque, progress=False)[0], ref, atol=1e-6)
    grey = np.random.default_rng(1).integers(0, 65535, (50, 40), dtype=np.uint16)
    odd = [Image.new("CMYK", (30, 40), (0, 50, 100, 0)), Image.new("L", (30, 40), 128),
           Image.fromarray(grey), Image.new("RGBA", (30, 40), (0, 0, 0, 0)), Image.new("P", (30, 40)),
           Image.new("1", (30, 40), 1), Image.new("F", (30, 40), 0.5)]
    out = enc.encode_images(odd, progress=False)
    assert len(out) == len(odd) and all(v.shape == ref.shape and np.isfinite(v).all() for v in out)
    white = enc.encode_images(Image.new("RGB", (30, 40), "white"), progress=False)[0]
    np.testing.assert_allclose(out[3], white, atol=1e-6)  # transparent page -> white, not black


def test_to_rgb_conversions():
    assert to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.fromarray(np.full((2, 2), 65535, np.uint16))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.fromarray(np.full((2, 2), 257 * 10, np.uint16))).getpixel((0, 0)) == (10, 10, 10)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 255))).getpixel((0, 0)) == (0, 0, 0)


def test_bad_image_inputs(enc, tmp_path):
    with pytest.raises(PDFError, match="does not exist"):
        enc.encode_images(tmp_path / "missing.png", progress=False)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PDFError, match="cannot be read as an image"):
        enc.encode_images([tmp_path / "bad.png"], progress=False)
    assert enc.encode_images([], progress=False) == []


# ---------------------------------------------------------------- device and dtype

def test_pick_device():
    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cuda", "mps", "cpu")
    with pytest.raises(EncoderOptionError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderOptionError, match="CUDA is not available"):
            pick_device("cuda:0")
        assert pick_device() != "cuda"


def test_cpu_has_fast_bf16_reads_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_fast_bf16(f) is False
    for flag in ("avx512_bf16", "amx_bf16"):
        f.write_text(f"processor\t: 0\nflags\t\t: fpu avx2 {flag}\n")
        assert cpu_has_fast_bf16(f) is True
    assert cpu_has_fast_bf16(tmp_path / "nope") is False
    from colpali_milvus.core import _cpu_flags
    flags = _cpu_flags()
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_pick_dtype_cpu(monkeypatch):
    monkeypatch.setattr(E, "cpu_has_fast_bf16", lambda *a: False)
    assert pick_dtype("cpu") == torch.float32 and pick_dtype("cpu", "auto") == torch.float32
    monkeypatch.setattr(E, "cpu_has_fast_bf16", lambda *a: True)
    assert pick_dtype("cpu") == torch.bfloat16


def test_pick_dtype_explicit():
    assert pick_dtype("cpu", "float32") == torch.float32
    assert pick_dtype("cpu", "bfloat16") == pick_dtype("cpu", "bf16") == torch.bfloat16
    assert pick_dtype("cpu", "fp16") == pick_dtype("cpu", "float16") == torch.float16
    assert pick_dtype("cuda", torch.float16) == torch.float16
    with pytest.raises(EncoderOptionError, match="unknown dtype"):
        pick_dtype("cpu", "int4")
    with pytest.raises(EncoderOptionError):
        pick_dtype("cpu", torch.int8)


def test_pick_dtype_cuda_and_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert pick_dtype("cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert pick_dtype("cuda") == torch.float16
    monkeypatch.setattr(E, "_mps_bf16_ok", lambda: False)
    assert pick_dtype("mps") == torch.float32
    monkeypatch.setattr(E, "_mps_bf16_ok", lambda: True)
    assert pick_dtype("mps") == torch.bfloat16


# ---------------------------------------------------------------- model resolution

def test_resolve_local_folder(tiny_model_dir):
    assert resolve_model(tiny_model_dir) == str(tiny_model_dir.resolve())
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


def test_resolve_nonexistent_local_path():
    for p in ("/definitely/not/here/model", "./no-such-dir/x/y"):
        with pytest.raises(ModelUnavailableError, match="no such folder"):
            resolve_model(p)


def test_resolve_bad_folders(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not a saved model"):
        resolve_model(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailableError, match="is a file"):
        resolve_model(tmp_path / "w.bin")


def test_resolve_unknown_hub_id_offline_fails_fast(offline):
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as ei:
        resolve_model("nobody-xyz/not-a-model-7f3a")
    assert time.perf_counter() - t < 10
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE" in msg and "download" in msg and "nobody-xyz/not-a-model-7f3a" in msg
    assert isinstance(ei.value, OSError) and isinstance(ei.value, ColPaliMilvusError)


def test_default_model_message_names_base(offline):
    with pytest.raises(ModelUnavailableError, match="colpaligemma-3b-pt-448-base"):
        resolve_model(E.DEFAULT_MODEL)


def test_resolve_unreachable_hub_fails_fast(online_but_unreachable):
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as ei:
        resolve_model("nobody-xyz/not-a-model-7f3a", timeout=5.0)
    assert time.perf_counter() - t < 15
    assert "did not answer" in str(ei.value) and "download" in str(ei.value)


def test_encoder_unreachable_hub_fails_fast(online_but_unreachable):
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError):
        ColPaliEncoder("nobody-xyz/not-a-model-7f3a", device="cpu")
    assert time.perf_counter() - t < 15


def _fake_cache(monkeypatch, tmp_path, repo, src, with_weights=True):
    "A Hugging Face cache in tmp_path holding `src`'s files as the snapshot of `repo`."
    import huggingface_hub.constants as C
    root = tmp_path / "hub"
    rdir = root / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    snap = rdir / "snapshots" / commit
    shutil.copytree(src, snap)
    if not with_weights:
        for f in snap.glob("*.safetensors"):
            f.unlink()
    (rdir / "refs").mkdir(parents=True)
    (rdir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(root))
    return snap


def test_offline_hub_id_loads_from_cache(offline, monkeypatch, tmp_path, tiny_model_dir):
    snap = _fake_cache(monkeypatch, tmp_path, "someone/tiny-colpali", tiny_model_dir)
    assert resolve_model("someone/tiny-colpali") == str(snap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyModelWarning)
        e = ColPaliEncoder("someone/tiny-colpali", device="cpu")
    assert e.model_name == "someone/tiny-colpali" and e.path == str(snap) and e.is_tiny
    assert e.encode_queries("hi")[0].shape[1] == 128


def test_offline_partial_cache_is_an_error(offline, monkeypatch, tmp_path, tiny_model_dir):
    _fake_cache(monkeypatch, tmp_path, "someone/partial", tiny_model_dir, with_weights=False)
    with pytest.raises(ModelUnavailableError, match="only part of it"):
        resolve_model("someone/partial")


def test_adapter_needs_its_base(offline, tmp_path):
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "nobody-xyz/base-model-9c1"}))
    (ad / "adapter_model.safetensors").write_bytes(b"")
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="nobody-xyz/base-model-9c1"):
        resolve_model(ad)
    assert time.perf_counter() - t < 10
    (ad / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with pytest.raises(ModelUnavailableError, match="base_model_name_or_path"):
        resolve_model(ad)


def test_unsupported_family_is_not_implemented(tmp_path, tiny_model_dir):
    d = tmp_path / "colqwen"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llava"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="'llava' is not supported") as ei:
        ColPaliEncoder(d, device="cpu")
    assert isinstance(ei.value, NotImplementedError) and isinstance(ei.value, ColPaliMilvusError)
    assert all(name in str(ei.value) for name in ("ColPali", "ColQwen2", "ColQwen2.5", "ColIdefics3"))
    cfg["model_type"] = "colpali"  # transformers' own ColPaliForRetrieval (vidore/colpali-v1.3-hf)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="vidore/colpali-v1.3"):
        ColPaliEncoder(d, device="cpu")
    # the family comes from the config, not the name: a PaliGemma folder named 'colqwen' is fine
    d2 = tmp_path / "colqwen2-looking-name"
    shutil.copytree(tiny_model_dir, d2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyModelWarning)
        assert ColPaliEncoder(d2, device="cpu").dim == 128
