"""From labelled corpora to checkpoints and the numbers behind them: manifests, training-time
augmentation and composite face+voice samples, the training loop, evaluation and metrics, and the
studies (`bench kshot|crossval|baseline|generalise`). Reads clips only through `emoweb.pipeline`."""
