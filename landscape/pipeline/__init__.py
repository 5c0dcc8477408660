"""The analysis pipeline: run discovery, results stores, the steps of ``landscape analyze`` and its summaries."""
