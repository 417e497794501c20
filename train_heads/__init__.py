"""Stage two: the paper's temporal heads, trained from a feature cache only.

Modules: config (TrainConfig, HeadConfig), labels (ABAW annotation files), data
(FeatureBank, windows, vectorised batch gathering), model (ExprHeadModel), checkpoint
(safetensors + JSON), loop (train, predict_logits), synthetic (a learnable test cache).
Importing this package never imports open_clip or transformers.
"""
