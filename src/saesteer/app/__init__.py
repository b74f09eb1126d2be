"""saesteer.app: a local web app over one model and one SAE (``saesteer app``).

Three views: a feature browser (search; top-activating contexts from an activation cache built once
and stored on disk; density histogram; logit lens; nearest features by decoder cosine; screen results
from ``features.json``), a steering playground (baseline, steered and conditionally steered outputs
streamed side by side with the gate's score and decision, and the equivalent ``saesteer generate``
command line) and a results viewer (a study's report, results table and per-prompt drill-down).
FastAPI + uvicorn serve it on 127.0.0.1; every asset is served locally.
"""
