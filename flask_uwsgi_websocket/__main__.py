"""``python -m flask_uwsgi_websocket metrics``: the uWSGI ini lines that declare the
package's metrics (see ``metrics``)."""

import sys

from .metrics import ini_lines

if sys.argv[1:] == ["metrics"]:
    print("\n".join(ini_lines()))
else:
    sys.exit("usage: python -m flask_uwsgi_websocket metrics   (uWSGI ini lines for the metrics)")
