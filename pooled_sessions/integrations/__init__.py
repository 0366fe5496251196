"""Sessions for web frameworks: Flask, Starlette (and FastAPI) and Django.

Each module adapts one framework; what a request does with its session is decided once,
in `request_state`. Import the framework's module directly: nothing here imports a
framework, so the core needs none installed.
"""
