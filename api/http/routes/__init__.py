"""Thin HTTP routes: validate, call the pipeline (through the batcher or a worker thread), shape the reply."""
