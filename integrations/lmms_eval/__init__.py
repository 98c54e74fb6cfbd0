"""The lmms-eval model ``semhitok_qwen`` (``semhitok_lmms_eval``).

lmms-eval imports :mod:`semhitok_lmms_eval.manifest` through its entry point at every start, so
this package imports nothing heavy: the model class lives in :mod:`semhitok_lmms_eval.model`,
the local-data task writer in :mod:`semhitok_lmms_eval.local_tasks`.
"""
