"""Training config: TOML files, `--set` overrides, typed sections and their checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.training.config import Config, config_from_data, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert config_from_data(json.loads(json.dumps(config.to_dict()))) == config  # a run's config.json reloads


def test_model_sections_keep_their_tables():
    # config.json and cache keys hold exactly the keys that were set, as before the sections were typed
    assert Config().to_dict()["dit"] == {"preset": "tiny"} and Config().to_dict()["vae"] == {"preset": "tiny"}
    assert Config().to_dict()["text"] == {"encoder": "minilm"}
    config = load_config(None, ["dit.depth=3", "vae.base_channels=8", "text.encoder=\"tiny\""])
    assert config.to_dict()["dit"] == {"preset": "tiny", "depth": 3}  # amends the default preset
    assert config.dit.build(in_channels=4, text_dim=32).depth == 3
    assert config.vae.build().base_channels == 8 and config.text.encoder == "tiny"
    config = load_config(None, ["dit.preset=\"mini\"", "dit.num_heads=8", "vae.path=\"runs/v\""])
    assert config.to_dict()["dit"] == {"preset": "mini", "num_heads": 8}
    assert config.to_dict()["vae"] == {"path": "runs/v", "preset": "tiny"} and config.vae.path == "runs/v"
    config = config_from_data({"vae": {"path": "runs/v"}, "dit": {"preset": "S/2"}})  # a table with its own preset
    assert config.to_dict()["vae"] == {"path": "runs/v"} and config.to_dict()["dit"] == {"preset": "S/2"}
    dit = config.dit.build(in_channels=16, text_dim=384)
    assert (dit.hidden_size, dit.in_channels, dit.text_dim) == (384, 16, 384)


@pytest.mark.parametrize("sets,error,message", [
    (["train.precision=\"fp8\""], ValueError, "train.precision must be one of 'auto', 'fp32', 'bf16', 'fp16'; got 'fp8'"),
    (["train.packing=\"bucket\""], ValueError, "train.packing must be one of 'pack', 'pad'; got 'bucket'"),
    (["train.distributed=\"zero\""], ValueError, "train.distributed must be one of 'ddp', 'fsdp'; got 'zero'"),
    (["train.deterministic=true"], ValueError, "train.deterministic must be one of 'auto', 'on', 'off'; got True"),
    (["train.schedule=\"linear\""], ValueError, "train.schedule must be one of 'cosine', 'constant'"),
    (["data.dataset=\"imagenet\""], ValueError, ("data.dataset must be one of 'shapes', 'folder', 'footage', "
                                                 "'footage\\+shapes'; got 'imagenet'")),
    (["data.resize=\"fit\""], ValueError, "data.resize must be one of 'crop', 'pad', 'stretch'; got 'fit'"),
    (["data.split=\"test\""], ValueError, "data.split must be one of 'train', 'heldout', 'all'; got 'test'"),
    (["dit.preset=\"huge\""], ValueError, "dit.preset must be one of .*'tiny'.*; got 'huge'"),
    (["vae.preset=\"big\""], ValueError, "vae.preset must be one of 'tiny', '4x4x4x8', '4x8x8x16', 'general'; got 'big'"),
    (["vae.ft=3"], ValueError, "ft must be 1, 2 or 4, got 3"),  # VAEConfig's own check, when the config is read
    (["dit.dept=3"], ValueError, "unknown key\\(s\\) \\['dept'\\] in \\[dit\\]; valid keys: .*'depth'"),
    (["vae.paht=\"x\""], ValueError, "unknown key\\(s\\) \\['paht'\\] in \\[vae\\]; valid keys: .*'path'"),
    (["text.encoder=\"mini-lm\""], FileNotFoundError, "'mini-lm' is neither 'minilm', 'tiny' nor an existing folder"),
    (["text.model=\"tiny\""], ValueError, "unknown TextSection keys \\['model'\\]; valid keys: \\['encoder'\\]"),
    (["train.steps"], ValueError, "expected section.key=value"),
    (["data.attribute_dropout=1.5"], ValueError, r"data.attribute_dropout must be in \[0, 1\], got 1.5"),
    (["data.focus=\"tiny circle\"", "data.focus_share=0.5"], ValueError, "data.focus must be a size and/or a shape"),
    (["data.focus_share=0.5"], ValueError, "data.focus_share must be in \\[0, 1\\] \\(and > 0 only with a focus\\)"),
    (["data.focus=\"triangle\"", "data.focus_share=0.5", "data.dataset=\"folder\""], ValueError,
     "data.focus_share needs data.dataset = \"shapes\""),
    (["data.attribute_dropout=0.2", "data.dataset=\"folder\""], ValueError,
     "data.attribute_dropout needs Shapes World captions .* got data.dataset = 'folder'"),
])
def test_bad_values_fail_when_the_config_is_read(sets, error, message):
    with pytest.raises(error, match=message):
        load_config(None, sets)


def test_bad_values_in_a_file_fail_too(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nprecision = \"half\"\n")
    with pytest.raises(ValueError, match="train.precision must be one of .*; got 'half'"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown config section \\[model\\]"):
        config_from_data({"model": {}})
