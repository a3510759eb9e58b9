from django.db import models


class Organization(models.Model):
    """A client or agency; owns studies. Memberships and roles come with the permission model."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
