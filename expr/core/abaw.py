"""Facts of the ABAW EXPR task and of the backbones' inputs that every stage shares.

The one place that spells the class names, the annotation header, the CLIP prompt and
Wav2Vec2's sampling geometry; stages import them from here (cache_format re-exports the
names for readers of a cache).
"""

from __future__ import annotations

# ABAW EXPR class order: label i in an annotation file is CLASS_NAMES[i]; -1 means "ignore".
CLASS_NAMES: tuple[str, ...] = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = -1
# First line of every annotation file (and of the label files the demo writes).
LABEL_HEADER = ",".join(CLASS_NAMES)
# First line of an ABAW submission file.
SUBMISSION_HEADER = "image_location," + LABEL_HEADER
# The paper's text prompts for the contrastive loss, one per class.
PROMPT_TEMPLATE = "A face expressing {}"

# Wav2Vec2-Base: 16 kHz mono in; its conv stack has a 400-sample receptive field, hop 320.
SAMPLE_RATE = 16_000
RECEPTIVE_FIELD = 400
HOP = 320


def prompts(class_names: tuple[str, ...] = CLASS_NAMES, template: str = PROMPT_TEMPLATE) -> list[str]:
    """The text prompt of every class, in class order."""
    return [template.format(c) for c in class_names]


def audio_steps(n_samples: int, receptive_field: int = RECEPTIVE_FIELD, hop: int = HOP) -> int:
    """Wav2Vec2 output steps for ``n_samples`` samples: floor((N - 400) / 320) + 1, 0 if too short."""
    if n_samples < receptive_field:
        return 0
    return (n_samples - receptive_field) // hop + 1


def audio_step_times(n_steps: int, receptive_field: int = RECEPTIVE_FIELD, hop: int = HOP,
                     sample_rate: int = SAMPLE_RATE):
    """Centre time in seconds of each Wav2Vec2 step (numpy array)."""
    import numpy as np

    return (np.arange(n_steps) * hop + receptive_field / 2) / sample_rate
