"""Console scripts, one module each: thin argparse layers over the library (user errors -> exit code 2)."""
