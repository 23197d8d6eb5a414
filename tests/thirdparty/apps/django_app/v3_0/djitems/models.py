from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    note = models.TextField(null=True, blank=True)
    # 3.0: a NOT NULL column. Its default lives in Python only: migrate fills existing rows with it and
    # leaves no default in the database, so an INSERT that does not name `owner` (2.0's) fails.
    owner = models.CharField(max_length=100, default="anonymous")

    def as_json(self):
        return {"id": self.id, "name": self.name, "created": self.created.isoformat(), "note": self.note,
                "owner": self.owner}
