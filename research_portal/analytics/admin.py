# The rollup tables are derived data (rebuild with `manage.py rebuild_analytics`); nothing to edit in admin.
