"""Process groups, the DeepSpeed configuration and memory estimates for a parallel layout."""
