"""Facial emotion classification server: photo in, faces found, FER2013 emotions out."""

__version__ = "1.0.0"
