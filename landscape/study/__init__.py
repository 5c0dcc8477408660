"""Comparisons over analysed runs: the flatness study (``landscape compare``)."""
