"""siglip-export, deploy side: load and run the exported artefacts without PyTorch.

Depends on numpy and onnxruntime only (Pillow / sentencepiece for images and text).
"""
