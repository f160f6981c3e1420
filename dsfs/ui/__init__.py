"""``dsfs ui``: a read-only web UI over a store (the ``ui`` extra: Starlette, uvicorn, Jinja2).

``command`` registers the CLI command, ``model`` answers the queries, ``graph`` draws version
DAGs with Graphviz, ``app`` serves pages and the JSON API under ``/api/``.
"""
