"""Stage one: decode videos and run the frozen backbones once into the feature cache."""
