"""CLIP features: the image tower over frames whose geometry is done, and the class prompts'
text embeddings. The twin of ``audio_features.py`` (Wav2Vec2 over a track)."""

from __future__ import annotations

import numpy as np

from expr.extract.specs import VisualSpec


def clip_text_embeddings(model, arch: str, prompts: list[str]):
    """(len(prompts), D) float32 CLIP text embeddings (not normalised) and exp(logit_scale)."""
    import open_clip
    import torch

    tokenizer = open_clip.get_tokenizer(arch)
    with torch.inference_mode():
        text = model.encode_text(tokenizer(prompts), normalize=False).float()
        scale = float(model.logit_scale.exp())
    return text.numpy(), scale


class VisualEncoder:
    """CLIP image features of uint8 frames whose geometry is done (resize + crop).

    Mean/std normalisation runs on the device on the uint8 batch (4x less to copy than
    float); the image tower runs without the final L2 normalisation, i.e. open_clip's
    ``encode_image(normalize=False)``. fp16 autocast, pinned memory and non-blocking copies
    on CUDA; fp32 on CPU (bf16 is several times slower on CPUs without AMX).

    ``submit`` starts a batch and ``collect`` waits for its features: on CUDA the caller fills
    the next batch (in another ``new_batch`` buffer) while the GPU works on this one.
    """

    def __init__(self, model, spec: VisualSpec, device="cpu"):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.visual = model.visual.to(self.device)  # the text tower is not needed per frame
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255

    def new_batch(self, batch_size: int) -> np.ndarray:
        """A (B, S, S, 3) uint8 input buffer, in pinned memory on CUDA (async copies from it)."""
        import torch

        size = self.spec.image_size
        pinned = self.device.type == "cuda"
        return torch.zeros((batch_size, size, size, 3), dtype=torch.uint8, pin_memory=pinned).numpy()

    def new_device_batch(self, batch_size: int):
        """A (B, S, S, 3) uint8 input buffer ON the encoder's device: what ``--geometry device``
        writes its frames into, so they never come back to the host (150 kB a frame)."""
        import torch

        size = self.spec.image_size
        return torch.zeros((batch_size, size, size, 3), dtype=torch.uint8, device=self.device)

    def submit(self, pixels):
        """Start encoding (B, S, S, 3) uint8 pixels (a host numpy buffer, or a tensor on the
        encoder's device: used as it is); the returned handle goes to ``collect``.

        ``pixels`` must stay untouched until the handle of the NEXT submit was collected, or
        this one's (the host-to-device copy of a pinned buffer is asynchronous, and so is the
        encoder's read of a device buffer).
        """
        import torch

        cuda = self.device.type == "cuda"
        x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)
        if x.device != self.device:
            x = x.to(self.device, non_blocking=cuda and x.is_pinned())
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std  # (B, 3, S, S)
            feats = self.visual(x)  # (B, D)
        return feats.float()

    def collect(self, handle) -> np.ndarray:
        """(B, D) float32 numpy features of a submitted batch (waits for the device)."""
        return handle.cpu().numpy()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 numpy -> (B, D) float32 numpy."""
        return self.collect(self.submit(pixels))
