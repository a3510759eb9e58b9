"""Operations: liveness and readiness endpoints (/healthz, /readyz) and structured logs (ops.logging)."""
