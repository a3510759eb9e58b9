"""The set-up pages organisation admins use to create and run studies (URLs under /studies/, namespace
"studies"). They compose the layers below: study rules (studies), participant sessions and erasure (capture),
the audit log (privacy). Not a Django app: it has no models."""
