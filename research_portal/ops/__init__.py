"""Operations: liveness and readiness endpoints (/healthz, /readyz), /metrics, request body limits and the
embedded periodic loop. Log formatting lives low in the layers, in research_portal/log_format.py."""
