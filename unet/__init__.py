"""The U-Net model, its segmenter, and the map from a model file's architecture name to its class."""
from unet.architectures import ARCHITECTURES, load_segmenter, segmenter_from_state
from unet.model import UNet
from unet.segmenter import UNetSegmenter

__all__ = ["ARCHITECTURES", "UNet", "UNetSegmenter", "load_segmenter", "segmenter_from_state"]
