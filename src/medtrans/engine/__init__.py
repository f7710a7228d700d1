"""Training engine: trainer (loop, AMP, EMA, checkpoints, resume), predictor, evaluator, run directories."""
