"""Run-comparison reports: rliable's aggregate metrics with stratified bootstrap intervals
(`stats`), run directories as typed records (`runs`), PNG figures (`plots`, matplotlib optional),
the plots of one run (`curves`) and the report command (`python -m angle_jax.report`)."""
