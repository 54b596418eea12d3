"""A stand-in for torchvision in the ONNX / zennit tests (torchvision from PyPI does not import
beside the CPU torch build CI installs). zennit imports only the ResNet block classes; the tests
build their ResNets from these blocks, so zennit's ResNet canonizer finds them."""
from . import models  # noqa: F401
