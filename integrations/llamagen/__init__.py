"""SemHiTok as a drop-in VQ model for LlamaGen-style AR generators (``semhitok_llamagen``).

Placeholder: the LlamaGen integration issue fills this package in.
"""
