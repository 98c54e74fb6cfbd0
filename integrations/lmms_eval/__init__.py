"""The lmms-eval model ``semhitok_qwen`` (``semhitok_lmms_eval``).

Placeholder: the unified-MLLM / lmms-eval issue fills this package in.
"""
