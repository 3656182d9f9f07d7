"""Captions for training and the pluggable prompt expanders of generation.

Training (Sora's recaptioning idea on the built-in world): every clip carries
short / plain / detailed captions; `choose_caption` draws one style per example
and `drop_caption` blanks it with probability p so the model also learns the
unconditional velocity that classifier-free guidance needs.

Generation: a model's world rewrites prompts into its caption form (patchflow.shapes.prompts
for the Shapes World) and names the words it cannot place (`PromptWarning`);
`TransformersExpander` uses any local text-generation model instead.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from patchflow.shapes.prompts import expand_prompt

DEFAULT_CAPTION_WEIGHTS = {"short": 0.2, "plain": 0.5, "detailed": 0.3}  # plain is what expansion produces


# ---------------------------------------------------------------- training captions
def choose_caption(captions: dict[str, str], rng: random.Random, weights: dict[str, float] | None = None) -> str:
    """Draw one caption style with the given weights (styles missing from `captions` are skipped)."""
    weights = DEFAULT_CAPTION_WEIGHTS if weights is None else weights
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"caption weights must be >= 0, got {weights}")
    styles = [s for s in weights if s in captions and weights[s] > 0]
    if not styles:
        raise ValueError(f"no caption style with positive weight: captions have {sorted(captions)}, "
                         f"weights are {weights}")
    return captions[rng.choices(styles, weights=[weights[s] for s in styles])[0]]


def drop_caption(caption: str, p: float, rng: random.Random) -> str:
    """Caption dropout: "" with probability p (the empty prompt is the unconditional input)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {p}")
    return "" if rng.random() < p else caption


# ---------------------------------------------------------------- words outside the world
class PromptWarning(UserWarning):
    """A prompt holds words the model's world has no meaning for; the video is still made."""


WORLD_NAMES = {"shapes": "Shapes World"}


def unknown_words_note(words: list[str], world: str | None = "shapes") -> str:
    """The sentence the CLI note and the PromptWarning say about a world's unknown words (the page words it alike)."""
    return (f"not understood by the {WORLD_NAMES.get(world, world)} model: {', '.join(words)} "
            "(the video still follows the words it knows)")


# ---------------------------------------------------------------- pluggable expanders
class PromptExpander:
    """Interface: `expander(prompt) -> prompt in the training caption style`. This base is the identity."""

    def __call__(self, prompt: str) -> str:
        return prompt


class RuleExpander(PromptExpander):
    """`expand_prompt` with fixed defaults, for Shapes World models."""

    def __init__(self, defaults: dict[str, str] | None = None):
        self.defaults = defaults

    def __call__(self, prompt: str) -> str:
        return expand_prompt(prompt, self.defaults)


EXPANDER_INSTRUCTION = (
    "You rewrite short video prompts into the detailed captions a text-to-video model was trained on. "
    "Describe the subjects, their colours, sizes and motion, the background and the camera in one or two plain "
    "sentences of at most 60 words. Do not add subjects the prompt does not mention. Reply with the caption only.")


class TransformersExpander(PromptExpander):
    """Prompt expansion with a local `transformers` text-generation model folder (offline, greedy decoding).

    Chat models get EXPANDER_INSTRUCTION as the system message and the prompt as the user message;
    plain language models get "<instruction>\\n\\nPrompt: <prompt>\\nCaption:". The first line of the
    reply is the expanded prompt; an empty reply falls back to the prompt itself.
    """

    def __init__(self, path: str | os.PathLike, instruction: str = EXPANDER_INSTRUCTION, max_new_tokens: int = 96):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"prompt expander folder {str(path)!r} has no config.json")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before importing transformers: never reach the Hub
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
        self.instruction, self.max_new_tokens = instruction, max_new_tokens

    def __call__(self, prompt: str) -> str:
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{self.instruction}\n\nPrompt: {prompt}\nCaption:"
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        reply = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
        return lines[0] if lines else prompt


def load_prompt_expander(spec: str | None) -> PromptExpander:
    """None or "none": identity; "rules": Shapes World rules; a folder: `TransformersExpander`."""
    if spec is None or spec == "none":
        return PromptExpander()
    if spec == "rules":
        return RuleExpander()
    if not Path(spec).expanduser().is_dir():
        raise FileNotFoundError(f"prompt expander {spec!r} is neither 'none', 'rules' nor a model folder")
    return TransformersExpander(spec)
