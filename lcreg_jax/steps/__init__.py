"""Train steps: pure functions `step(state, batch, *, hp) -> (state, metrics)`.

`hp` is a frozen dataclass of static hyper-parameters built once from the
resolved config (`Hparams.from_config`); every step reports `loss` and
`params_finite`, which the loop's NaN guard reads.
"""
