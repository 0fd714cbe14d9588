"""Mask R-CNN (He et al. 2017) for nuclei, split into three exportable graphs.

See README.md here for the design and sizes, and edgeseg/maskrcnn.py for the TF-free
inference half (anchors, box coding, NMS, RoIAlign, label assembly) that training shares.
"""
