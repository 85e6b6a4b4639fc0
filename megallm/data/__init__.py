"""Corpora: tokenizer, WebDataset token shards with a manifest, and the training batches."""
