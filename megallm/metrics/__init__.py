"""Where metrics go (console, JSONL, W&B) and the throughput / MFU / ETA arithmetic."""
