"""Full-precision Keras 3 / TensorFlow training of edgeseg's models (the `train` extra)."""
