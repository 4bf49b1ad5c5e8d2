"""python -m angle_jax.serve --checkpoint RUN_DIR: the policy server (see angle_jax/serve/server.py)."""
import sys

from angle_jax.serve.server import main

sys.exit(main())
