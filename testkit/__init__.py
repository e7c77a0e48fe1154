"""Fixtures shared by ``tests/`` and ``bench/``, one home for each: tiny and full-size random checkpoints
(:mod:`testkit.checkpoints`), PDFs built in code (:mod:`testkit.pdfs`) and synthetic page multivectors
(:mod:`testkit.corpus`). Not part of the installed package (pyproject lists only the four stages)."""
