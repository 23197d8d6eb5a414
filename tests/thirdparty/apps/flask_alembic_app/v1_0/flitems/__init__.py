"""A tiny Flask + SQLAlchemy app whose SQLite schema alembic migrates, for backout's third-party tests."""

from datetime import datetime, timezone

from flask import Flask, jsonify, request
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from flitems.models import Item

VERSION = "1.0"


def create_app(db: str, head: str) -> Flask:
    """The WSGI app on the SQLite file `db`; `head` is the alembic revision this version expects."""
    app = Flask("flitems")
    engine = create_engine(f"sqlite:///{db}")

    @app.get("/health")
    def health():
        try:
            with engine.connect() as conn:
                schema = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError as exc:
            return jsonify(status="unavailable", version=VERSION, error=str(exc)), 503
        status = "ok" if schema == head else "unavailable"
        return jsonify(status=status, app="flask_alembic_app", version=VERSION, schema=schema), (
            200 if status == "ok" else 503)

    @app.get("/items")
    def list_items():
        with Session(engine) as session:
            return jsonify(items=[item.as_json() for item in session.scalars(select(Item).order_by(Item.id))])

    @app.post("/items")
    def add_item():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            return jsonify(error={"code": "bad_request", "message": 'send {"name": "..."}'}), 400
        with Session(engine) as session:  # a database error here is Flask's 500, logged with its traceback
            item = Item(name=body["name"], created=datetime.now(timezone.utc))
            session.add(item)
            session.commit()
            return jsonify(item.as_json()), 201

    return app
