"""The model, its optimizer and DeepSpeed for one rank of a layout (OLMo-core's "train module").

- engine.py               ParallelEngine: build, train and eval steps, save and load its state,
                          per-parameter access to fp32 masters and Adam state for conversions
- deepspeed_config.py     the DeepSpeed JSON, built from the run's config
- pipeline.py             the model's layer list -> DeepSpeed PipelineModule stages
- deepspeed_internals.py  every DeepSpeed detail that is not its public API, in one place
"""
