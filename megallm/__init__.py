"""megallm: pretrain Llama-style language models from one CPU to many GPU nodes.

megatron-core warns at import that Transformer Engine and Apex are absent; megallm uses
neither (its layers fall back to PyTorch), so that one warning is silenced here, before
any megallm module imports megatron-core.
"""

import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

__version__ = "0.1.0"
