from django.db import migrations


class Migration(migrations.Migration):
    """`completed_at` meant "viewing ended", while State.COMPLETED means "validated": the field says so now."""

    dependencies = [("capture", "0007_session_event_ad_unplayable")]

    operations = [
        migrations.RenameField(model_name="participantsession", old_name="completed_at", new_name="viewing_ended_at"),
    ]
