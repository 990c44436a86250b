"""Utilities of DTKD: checkpoints, image I/O, MATLAB resize, metrics, losses, data, inference."""
