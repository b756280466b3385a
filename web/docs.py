"""`/openapi.json` and `/docs`: the generated OpenAPI, rendered by the bundled Swagger UI."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as HttpRoute

from web.openapi import build_openapi
from web.rules import Route

# Everything from this origin: the page works with no internet access, and injected
# markup could load nothing from elsewhere. Swagger UI sets inline styles.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Taxi Driver API</title>
  <link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


def routes(api_routes: list[Route]) -> list[BaseRoute]:
    document = build_openapi(api_routes)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": DOCS_CSP})

    return [HttpRoute("/openapi.json", openapi, methods=["GET"]), HttpRoute("/docs", docs, methods=["GET"])]
