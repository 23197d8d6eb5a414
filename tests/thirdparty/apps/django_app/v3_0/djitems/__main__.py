"""python -m djitems serve --db PATH --port N   (migrate, then serve on 127.0.0.1:N with gunicorn)
python -m djitems migrate --db PATH            (migrate only)"""

import argparse
import logging
import os
import sys

from djitems import VERSION


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m djitems")
    parser.add_argument("command", choices=["serve", "migrate"])
    parser.add_argument("--db", required=True, help="the SQLite file")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    db = os.path.abspath(args.db)
    os.environ["ITEMS_DB"] = db
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djitems.settings")

    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    log = logging.getLogger("djitems")
    log.info("djitems %s: migrating %s", VERSION, db)
    call_command("migrate", interactive=False, verbosity=1)
    connections.close_all()  # nothing open across gunicorn's fork
    if args.command == "migrate":
        return 0
    log.info("djitems %s: serving %s on 127.0.0.1:%d", VERSION, db, args.port)
    from django.core.wsgi import get_wsgi_application
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"127.0.0.1:{args.port}", "workers": 1, "accesslog": "-", "errorlog": "-",
                               "loglevel": "info", "graceful_timeout": 10, "control_socket_disable": True,
                               "proc_name": f"djitems-{VERSION}"}.items():
                self.cfg.set(key, value)

        def load(self):
            return get_wsgi_application()

    Server().run()  # SIGTERM: gunicorn stops its worker and exits 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
