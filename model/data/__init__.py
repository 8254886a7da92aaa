"""Data sources for training and evaluation: synthetic shapes, csv, image folders, webdataset."""
