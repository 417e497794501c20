"""Stage one: decode videos and run the frozen backbones once into the feature cache.

``media`` (with ``probe``, ``video_decode``, ``frames_dir``, ``audio_decode``; message types
in ``messages``) / ``decode_pool`` / ``discover`` turn videos into frame and audio messages;
``specs`` (the table in backbones.json) and ``weights`` build the backbones, ``visual_features``
and ``audio_features`` turn those messages into features;
``encoder_feed.EncoderFeed`` batches and writes; ``run.run_extract(ExtractConfig)`` is the loop
behind ``expr extract``.
"""
