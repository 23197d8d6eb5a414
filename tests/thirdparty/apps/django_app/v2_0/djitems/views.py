import json

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from djitems.models import Item


def health(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM django_migrations WHERE app = 'djitems' ORDER BY id DESC LIMIT 1")
            row = cursor.fetchone()
    except DatabaseError as exc:
        return JsonResponse({"status": "unavailable", "version": settings.APP_VERSION, "error": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "app": "django_app", "version": settings.APP_VERSION,
                         "schema": row[0] if row else None})


@require_http_methods(["GET", "POST"])
def items(request):
    if request.method == "GET":
        return JsonResponse({"items": [item.as_json() for item in Item.objects.order_by("id")]})
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        return JsonResponse({"error": {"code": "bad_request", "message": 'send {"name": "..."}'}}, status=400)
    # A database error here becomes Django's 500 page, logged with its traceback by django.request.
    item = Item.objects.create(name=body["name"], note=body.get("note"))
    return JsonResponse(item.as_json(), status=201)
