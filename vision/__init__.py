"""vision: the interp-suite adapter for image classifiers."""
