"""The toy world: generated big-number word problems and tiny models warmed up by SFT, so that the whole loop
(SFT, curriculum, GRPO, evaluation) can be seen learning on a laptop. `python -m delegate.training.toy.demo` runs
it."""
