"""The OpenAPI 3.1 document of the API (served by routes/openapi.py): shared components and the
jobs, system and admin routes (spec.py), the front doors (front.py), and the dashboard, metrics
and experiment routes (extras.py)."""
