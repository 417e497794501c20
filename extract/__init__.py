"""Stage one: decode videos and run the frozen backbones once into the feature cache.

``media`` / ``decode_pool`` / ``discover`` turn videos into frame and audio messages;
``backbones`` (specs in backbones.json) and ``audio_features`` turn those into features;
``run.run_extract(ExtractConfig)`` is the loop behind ``expr extract``.
"""
