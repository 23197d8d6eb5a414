"""python -m flitems serve --db PATH --port N   (alembic upgrade head, then serve on 127.0.0.1:N with gunicorn)
python -m flitems migrate --db PATH            (alembic upgrade head only)

A database whose alembic revision this version does not know (a newer version migrated it) is refused:
alembic's own "Can't locate revision identified by '...'" is logged with the database's path, exit 3."""

import argparse
import logging
import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from flitems import VERSION, create_app

REFUSED = 3
log = logging.getLogger("flitems")


def alembic_config(db: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m flitems")
    parser.add_argument("command", choices=["serve", "migrate"])
    parser.add_argument("--db", required=True, help="the SQLite file")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, datefmt="%Y-%m-%d %H:%M:%S %z",
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    db = os.path.abspath(args.db)
    config = alembic_config(db)
    head = ScriptDirectory.from_config(config).get_current_head()
    log.info("flitems %s: alembic upgrade head (%s) on %s", VERSION, head, db)
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        log.error("%s.%s: %s", type(exc).__module__, type(exc).__qualname__, exc)  # alembic's own message
        log.error("flitems %s: refusing to start: database %s is at an alembic revision this version does not "
                  "know (migrated by a newer version?); this version's head is %s", VERSION, db, head)
        return REFUSED
    if args.command == "migrate":
        return 0
    log.info("flitems %s: serving %s on 127.0.0.1:%d", VERSION, db, args.port)
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"127.0.0.1:{args.port}", "workers": 1, "accesslog": "-", "errorlog": "-",
                               "loglevel": "info", "graceful_timeout": 10, "control_socket_disable": True,
                               "proc_name": f"flitems-{VERSION}"}.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(db, head)

    Server().run()  # SIGTERM: gunicorn stops its worker and exits 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
