"""The browser front end: `server.create_app` (FastAPI) and the page in `static/`.

Imported only by `koalarization serve`, so the rest of the package never needs FastAPI installed.
"""
