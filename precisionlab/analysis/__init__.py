"""What the numbers say: the report's arithmetic (report.py), its text
tables (tables.py), figures (plots.py) and documents (render.py).
"""
