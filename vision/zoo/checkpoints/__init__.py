"""Shipped zoo checkpoints (safetensors) and model cards (JSON); a package so that they ship as package data."""
