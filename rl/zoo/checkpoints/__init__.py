"""Shipped zoo checkpoints (package data: ``*.safetensors`` weights and ``*.json`` cards)."""
