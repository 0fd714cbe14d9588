"""Export trained Keras models to edge formats (TFLite, ONNX, TensorRT), each artifact verified
against its source and described by a manifest (the `export` extra; needs TensorFlow).

Modules: targets (what each --target makes), calibration (INT8 crops), tflite, onnx, tensorrt
(converters), verify (the accuracy gate), pipeline (one model to one target, end to end).
A Mask R-CNN's three graphs: maskrcnn_graphs (shapes, float conversions), maskrcnn_calibration
(INT8 inputs of each graph), maskrcnn_pipeline (the folder of graphs + maskrcnn.json).
"""
