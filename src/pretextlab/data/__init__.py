"""Data sources (synthetic, image folders in memory or streamed, torchvision sets, VOC 2007) and the one DataModule."""

from pretextlab.data.datamodule import InMemoryDataset, PretextDataModule
from pretextlab.data.image_folder_source import ImageFolderSource
from pretextlab.data.sources import DataError, DataSource, Split
from pretextlab.data.streaming_source import StreamingFolderSource, image_folder
from pretextlab.data.synthetic_source import SyntheticSource
from pretextlab.data.torchvision_source import TorchvisionSource
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
