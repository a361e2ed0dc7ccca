"""The read-only web console (`cascade up --console`, or `python -m app.console.server`): explain a
user's page stage by stage, an item, the stack's health and latency, experiment arms and the
simulation report. Server-rendered pages; charts are inline SVG drawn here (no CDN, no JS)."""
