"""Class colours shared by every figure (timelines, report), so a class looks the same everywhere.

Eight hues told apart on a white page (matplotlib's tab10 family); sadness, happiness and
anger take the usual blue, yellow and red so a reader guesses them before reading the legend,
and Neutral, the class most frames sit in, is a pale colour that stays quiet in stacked areas.
Red and green (anger, disgust) stay hard to tell apart for red-green colour blindness: the
legend names them. Greys are kept OUT of the classes: grey means "no face" or "unlabelled"
in a timeline.
"""

from __future__ import annotations

# One colour per class, in expr.core.abaw.CLASS_NAMES order.
CLASS_COLOURS: tuple[str, ...] = (
    "#9ecae1",  # Neutral: pale blue, the calm background most frames sit in
    "#d62728",  # Anger
    "#2ca02c",  # Disgust
    "#9467bd",  # Fear
    "#f2b701",  # Happiness
    "#1f4e9c",  # Sadness
    "#ff7f0e",  # Surprise
    "#8c564b",  # Other
)
UNLABELLED_COLOUR = "#ffffff"   # truth band where the label is -1 (hatched on top)
NO_FACE_COLOUR = "#7f7f7f"      # hatched shading over frames without a detected face

