#!/usr/bin/env python
"""Django's usual entry point: `ITEMS_DB=/path/brain.sqlite python manage.py migrate`."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djitems.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
