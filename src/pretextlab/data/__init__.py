"""Data sources (synthetic, image folders in memory or streamed, torchvision sets) and the one DataModule."""

from pretextlab.data.datamodule import InMemoryDataset, PretextDataModule
from pretextlab.data.sources import (
    DataError,
    DataSource,
    ImageFolderSource,
    Split,
    SyntheticSource,
    TorchvisionSource,
)
from pretextlab.data.streaming_source import StreamingFolderSource, image_folder
from pretextlab.data.voc import VOC2007Source

__all__ = [
    "DataError",
    "DataSource",
    "ImageFolderSource",
    "InMemoryDataset",
    "PretextDataModule",
    "Split",
    "StreamingFolderSource",
    "SyntheticSource",
    "TorchvisionSource",
    "VOC2007Source",
    "image_folder",
]
