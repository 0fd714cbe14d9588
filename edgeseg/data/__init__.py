"""Datasets: the Kaggle DSB2018 layout, a plain image+labels layout, and a decode cache."""

from edgeseg.data.dataset import DatasetError, Sample, find_samples, load_sample

__all__ = ["DatasetError", "Sample", "find_samples", "load_sample"]
