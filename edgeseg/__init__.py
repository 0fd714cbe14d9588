"""edgeseg: offline nucleus segmentation for microscopy on modest hardware.

Importing this package is cheap on purpose: no TensorFlow, no ONNX Runtime session,
nothing that touches the network. Heavy pieces are imported by the command that needs them.
"""

__version__ = "0.1.0"
