"""The U-Net model and its segmenter; importing this package registers the 'unet' architecture."""
from unet.model import UNet
from unet.segmenter import UNetSegmenter

__all__ = ["UNet", "UNetSegmenter"]
