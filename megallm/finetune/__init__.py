"""Fine-tuning a pretrained model on labelled data (`launch/finetune.py`), on the same layers,
parallel layouts, loop and checkpoints as pretraining (megallm.train.build.assemble_trainer).

- examples.py     labelled rows from JSON lines or CSV: {text, label} and {prompt, response}
- batches.py      rows -> token arrays (classification rows, packed supervised windows) and the
                  rank's shuffled micro-batches
- objectives.py   micro-batches -> the model's inputs and targets (pooled class logits; response-only loss)
- validation.py   held-out accuracy and macro-F1, or response loss, every train.eval_every steps
- run.py          the run: config, pretrained weights, data, trainer
"""
