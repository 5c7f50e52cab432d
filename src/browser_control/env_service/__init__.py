"""The BrowserGym MiniWoB++ environment service (FastAPI + Playwright), see docs/http-api.md."""
