"""Flask-uWSGI-WebSocket: RFC 6455 WebSockets for Flask apps served by uWSGI."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="Flask-uWSGI-WebSocket",
    version="1.0.0.dev0",
    description="High-performance, standards-correct WebSockets for Flask apps served by uWSGI",
    long_description=(Path(__file__).parent / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["flask_uwsgi_websocket", "flask_uwsgi_websocket.*"]),
    package_data={"flask_uwsgi_websocket": ["py.typed"]},
    python_requires=">=3.10",
    # The fixtures websocket_client and websocket_live_server (README.rst, "Testing").
    entry_points={"pytest11": ["flask_uwsgi_websocket = flask_uwsgi_websocket.pytest_plugin"]},
    install_requires=["Flask>=2.3", "Werkzeug>=2.3", "websockets>=16"],
    extras_require={
        "gevent": ["gevent>=23.9", "greenlet>=3"],
        "asyncio": ["greenlet>=3"],
        "redis": ["redis>=5"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6.100",  # tests/test_core_fuzz.py
            "mypy>=1.8",
            "ruff>=0.4",
            "websocket-client>=1.6",
            "Flask-Login>=0.6.3",
            "Flask-SQLAlchemy>=3.1",
            "playwright>=1.65",  # drives Debian's chromium (tests/test_chat_browser.py)
        ],
        # bench/echo.py's peers: picows (also the load), websockets (a requirement), flask-sock on
        # gunicorn's gevent worker; matplotlib for bench/charts.py and bench/soak_chart.py.
        "bench": [
            "picows>=1.6",
            "uvloop>=0.19",
            "flask-sock>=0.7",
            "gunicorn>=22",
            "matplotlib>=3.7",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
    ],
)
