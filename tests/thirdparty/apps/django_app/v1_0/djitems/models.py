from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    def as_json(self):
        return {"id": self.id, "name": self.name, "created": self.created.isoformat()}
