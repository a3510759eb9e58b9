#!/bin/sh
# As the official redis image: options alone mean redis-server; protected mode is off unless a config file
# says otherwise (the container's network decides who reaches it); the server runs as the redis user.
set -eu
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ]; then
    shift
    case "${1:-}" in
        *.conf) set -- redis-server "$@" ;;
        *) set -- redis-server --protected-mode no "$@" ;;
    esac
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
