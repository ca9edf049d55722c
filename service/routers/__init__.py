"""HTTP routers. Every /v1 router (but admin) joins the one in `service.app.api_v1`, which
carries the API-key check; each declares its full path prefix (route templates in metrics
and the schema are then complete whatever FastAPI's router nesting does)."""

V1 = "/v1"
