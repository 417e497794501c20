"""The feature cache: the only code that knows the Zarr/HDF5 layout (see schema.py)."""

from expr.cache_format.reader import CacheReader, VideoInfo, open_cache
from expr.cache_format.schema import (
    CLASS_NAMES,
    FORMAT_VERSION,
    PROMPT_TEMPLATE,
    BackboneRecord,
    BackboneRecords,
    VideoEntry,
    VideoExtras,
    validate_video_id,
)
from expr.cache_format.writer import CacheWriter, consolidate, ensure_consolidated, open_writer
from expr.cache_format.hdf5 import export_hdf5, import_hdf5
from expr.cache_format.remove import remove_videos
from expr.cache_format.safety import check_output_path, is_cache, remove_cache
from expr.cache_format.validate import validate_cache

# THE list of public names (tests/test_interfaces.py checks it equals the imports above).
__all__ = [
    "CLASS_NAMES", "FORMAT_VERSION", "PROMPT_TEMPLATE", "BackboneRecord", "BackboneRecords", "CacheReader",
    "CacheWriter", "VideoEntry", "VideoExtras", "VideoInfo", "consolidate", "ensure_consolidated", "open_cache",
    "open_writer",
    "validate_video_id", "check_output_path", "export_hdf5", "import_hdf5", "is_cache", "remove_cache",
    "remove_videos", "validate_cache",
]
