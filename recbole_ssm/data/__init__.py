"""recbole-ssm data: raw MovieLens, Amazon Reviews 2023, SASRec-style text and your own CSV / Parquet
event files to RecBole atomic files.

``python -m recbole_ssm.data prepare SOURCE --input PATH`` (see ``docs/data.md``), or
:func:`recbole_ssm.data.pipeline.prepare` from Python.
"""
