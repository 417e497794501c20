"""The authors' window loop (their data.py), transcribed literally as the oracle that
``expr.train_heads.windows.reference_windows`` is checked against. Keep it dumb: no
shortcuts, one frame at a time, exactly the branches of the original."""

from __future__ import annotations

MISSING_LIMIT = 5


def authors_loop(labels, face, seq_len, stride):
    """-> (windows, source): the emitted windows as lists of (own index, source index)
    elements, and each frame's source (-1 = the frame was not appended)."""
    current_sequence, last_valid, missing_count = [], None, 0
    windows, source = [], [-1] * len(labels)
    for i, (label, has_face) in enumerate(zip(labels, face)):
        is_valid = (label != -1) and bool(has_face)
        if is_valid:
            current_sequence.append((i, i))
            last_valid = i
            missing_count = 0
        elif last_valid is not None and missing_count < MISSING_LIMIT:
            current_sequence.append((i, last_valid))  # last_valid's image and label
            missing_count += 1
        else:
            current_sequence = []
            last_valid = None
            missing_count = 0
        if current_sequence and current_sequence[-1][0] == i:
            source[i] = current_sequence[-1][1]
        if len(current_sequence) == seq_len:
            windows.append(list(current_sequence))
            current_sequence = current_sequence[stride:]
    return windows, source
