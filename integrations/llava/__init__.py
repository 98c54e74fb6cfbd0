"""SemHiTok as a LLaVA-v1.5 vision tower with a Dual-MLP projector (``semhitok_llava``).

Placeholder: the LLaVA integration issue fills this package in.
"""
