"""The live dashboard at `/`: the page (index.html, static/) and the data it polls (data.py)."""
