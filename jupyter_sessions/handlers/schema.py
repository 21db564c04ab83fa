"""The OpenAPI pieces every handler module uses: error responses and JSON bodies.

``openapi.py`` assembles the document (and imports the handlers); these small builders live apart
so that the handler modules can share them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: One error answer: ``{"message", "reason"}`` (the Error response of the document).
ERROR = {"$ref": "#/components/responses/Error"}


def error_responses(*codes: int) -> dict[str, Any]:
    """The Error response under each status code."""
    return {str(code): ERROR for code in codes}


#: What any authenticated API call may answer.
ERRORS = error_responses(400, 401, 403)


def json_response(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    """A response with a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}
