"""siglip-export, deploy side: load and run the exported artefacts without PyTorch.

Depends on numpy and onnxruntime (Pillow for images, sentencepiece for text, tensorrt for
native engines). Never imports torch.
"""

from .artefacts import Artefacts
from .contract.manifest import Manifest
from .encoders import ImageEncoder, TextEncoder, ZeroShotClassifier
from .errors import ArtefactError, InputError, ProviderError, UserError
from .runners.onnxruntime_model import OnnxModel, TensorRTOptions

__all__ = ["Artefacts", "ArtefactError", "ImageEncoder", "InputError", "Manifest", "OnnxModel", "ProviderError",
           "TensorRTOptions", "TextEncoder", "UserError", "ZeroShotClassifier"]
