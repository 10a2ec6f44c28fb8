"""The HTTP API's blueprints, one per feature (jobs, system, admin, the Ollama and OpenAI front
doors, experiments, dashboard, metrics, OpenAPI), and what they share: request parsing
(common.py), who is calling (auth.py), admission of a new job (submission.py, front.py), the
servers' own error answers (http_errors.py) and what a caller may see of the infrastructure
(infra_view.py). api.create_app registers them; they reach the service only through its facade."""
