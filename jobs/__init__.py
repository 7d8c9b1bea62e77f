"""Ray Data pipelines for corpus-scale offline embedding."""
