"""Export trained Keras models to edge formats (TFLite, ONNX, TensorRT), each artifact verified
against its source and described by a manifest (the `export` extra; needs TensorFlow).

Modules: targets (what each --target makes), calibration (INT8 crops), tflite, onnx, tensorrt
(converters), verify (the accuracy gate), pipeline (one model to one target, end to end).
"""
