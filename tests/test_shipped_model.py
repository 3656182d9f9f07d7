"""The shipped Shapes World model works: it loads by default and follows held-out prompts.

A fast version of the model card's evaluation (src/patchflow/pretrained/shapes-world/README.md: 24
held-out prompts and 8 image-to-video clips at the model's own settings, ~15 s), so a regression in
the weights, the VAE, the sampler, the noisy-end expert or the loading path fails CI. Measured on the
2-core CPU when the model shipped (2026-12-07): held-out 71% fully correct (motion 100%),
image-to-video 88% (first frame kept in 8 of 8, 32.4 dB); the thresholds sit below with room for
other machines' float rounding, and above what the pipeline gets without its noisy-end expert
(held-out motion ~43%) or with the general VAE's decoder (46% of the same 24 prompts, 7 of 8 kept).
"""

import pytest
import torch

from patchflow.evaluation.model_eval import evaluate_row
from patchflow.paths import default_model_dir
from patchflow.pipelines.folder import MODEL_INDEX
from patchflow.pipelines.pipeline import VideoPipeline

# `$PATCHFLOW_MODEL` may point elsewhere; without a model there, there is nothing to test.
pytestmark = pytest.mark.skipif(not (default_model_dir() / MODEL_INDEX).is_file(),
                                reason=f"no model in {default_model_dir()}")


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield VideoPipeline.from_pretrained()  # no path: the weights inside the package
    torch.set_num_threads(threads)


def test_shipped_model_is_in_the_package():
    folder = default_model_dir()
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model_index.json", "transformer/model.safetensors", "vae/model.safetensors"} <= files
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 60e6


def test_shipped_vae_has_latent_statistics(pipe):
    # The DiT was trained on normalised latents; a VAE saved without its statistics would
    # silently feed it latents of the wrong scale.
    assert pipe.vae.config.latent_std != [1.0] * pipe.vae.config.latent_channels


def test_shipped_model_has_its_noisy_end_expert(pipe):
    assert pipe.noisy_expert is not None and 0 < pipe.noisy_boundary < 1
    assert pipe.world == "shapes"


def test_follows_heldout_prompts(pipe):
    # Colour/shape/motion combinations never seen together in training.
    result = evaluate_row(pipe, "heldout", count=24, progress=False)
    assert result["background"] >= 0.9, result
    assert result["motion"] >= 0.8, result  # the noisy-end expert's work: ~43% without it
    assert result["all"] >= 0.55, result


def test_image_to_video_keeps_the_given_frame(pipe):
    result = evaluate_row(pipe, "image_to_video", count=8, progress=False)
    assert result["kept"] >= 0.875, result  # frame 0 reproduced at >= 28 dB
    assert result["all"] >= 0.5, result
