"""CREST head steering (arXiv 2512.24574): calibration (calibrate.py, traces.py, probes.py),
the intervention and its per-token gate (ops.py), and the vLLM plugin that applies them inside
the engine worker (vllm_plugin.py, steered_models.py).

Imports nothing here: vLLM imports the plugin module in every process it starts. These
modules import no other reasonloom sub-package; the `reasonloom steer` command that drives
calibration is reasonloom/cli/steer_cmd.py.
"""
