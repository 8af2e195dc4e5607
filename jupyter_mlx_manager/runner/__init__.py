"""The runner: one child process per loaded model (`python -m jupyter_mlx_manager.runner`).

Its one generation thread loads the model with mlx-lm and generates (MLX streams are
thread-local). It speaks newline-delimited JSON: commands on stdin, events on stdout
(see `protocol.py`). The Jupyter server never imports MLX; a crash here takes nothing else down.
"""
