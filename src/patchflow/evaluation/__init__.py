"""Measuring: reconstruction metrics, VAE evaluation, speed benchmarks, loss plots."""
