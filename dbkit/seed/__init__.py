"""``dbkit seed``: data for the posts tables.

``commands`` (sample, synthetic, files: the library API), ``bulk`` (COPY and the constraints put
aside during big loads), ``synthetic`` (deterministic generated rows), ``files`` (reading CSV/JSON
files, every row checked), ``merge`` (loading checked rows by natural key).
"""
