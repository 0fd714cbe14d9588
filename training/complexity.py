"""Parameters and FLOPs per tile, counted from the layers themselves (no profiler guesswork).

FLOPs count a multiply-add as 2 operations and include only convolutions (BatchNorm folds
into them at export; activations and pooling are negligible next to them).
"""

from __future__ import annotations


def conv_flops(model, tile: int) -> int:
    """FLOPs of all convolutions (depthwise, transposed) for one (tile x tile) gray input."""
    import keras

    fixed = keras.models.clone_model(model, input_tensors=keras.Input((tile, tile, 1)))
    total = 0
    for layer in fixed.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape  # each input pixel scatters one kernel
            kernel_h, kernel_w, filters, channels = layer.kernel.shape
        elif isinstance(layer, keras.layers.DepthwiseConv2D):  # one kernel per channel
            _, height, width, _ = layer.output.shape
            kernel_h, kernel_w, channels, filters = layer.kernel.shape  # filters: multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel_h, kernel_w, channels, filters = layer.kernel.shape
        else:
            continue
        total += 2 * height * width * kernel_h * kernel_w * channels * filters
    return int(total)
