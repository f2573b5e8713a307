"""Server settings: one frozen object, validated at load time (reference section 8.2)."""

from __future__ import annotations

from dataclasses import dataclass

from proto.qnetd_enums import TlsSupported


@dataclass(frozen=True, slots=True)
class QnetdSettings:
    """Everything the arbitration core needs to know about its configuration."""

    tls: TlsSupported = TlsSupported.REQUIRED
    """0 off, 1 on (optional for clients), 2 required (the default: see `admission_warning`)."""
    client_cert_required: bool = True
    """Ask for (and require) a client certificate naming the cluster."""
    max_clients: int = 0
    """0 = unlimited; otherwise further connections are accepted and closed at once."""
    heartbeat_min_ms: int = 1000
    heartbeat_max_ms: int = 120000
    dpd_enabled: bool = True
    dpd_coefficient: float = 1.5
    """Dead-peer timeout = coefficient x client heartbeat (reference 4.7)."""
    max_receive_size: int = 32768
    """Largest whole message accepted, header included; advertised as max request size."""
    max_send_size: int = 32768
    """Largest message sent; advertised as max reply size."""
    max_send_buffers: int = 32
    """Queued outgoing messages per client before it is dropped."""
    keep_active_partition_default: bool = False
    """Per-client KAP flag set at INIT (qdevice then sets its own via SET_OPTION)."""
    # Admission of unauthenticated connections (qnetd/connection_limits.py, applied by the adapter).
    preinit_timeout: float = 5.0
    """Seconds from accept to an accepted INIT (PREINIT, STARTTLS, handshake, INIT)."""
    preinit_per_source: int = 16
    """Connections not yet INIT-ed per source address (IPv6: per /64)."""
    preinit_max: int = 1024
    """Connections not yet INIT-ed in all."""
    fd_reserve: int = 128
    """File descriptors kept free for established clients' needs, HTTP, control and enrollment."""
    tls_handshake_threads: int = 1
    """Worker threads for the CPU of server TLS handshakes (qnetd/runtime/tls_offload.py);
    0 runs them on the event-loop thread (asyncio's TLS), where they delay established clients."""

    @property
    def pre_init_dpd_seconds(self) -> float:
        """Dead-peer timeout before INIT: coefficient x heartbeat_max (1.5 x 120 s = 180 s)."""
        return self.dpd_coefficient * self.heartbeat_max_ms / 1000

    def admission_warning(self) -> str | None:
        """What a weaker-than-default TLS setting lets in, or None for the secure default.

        Only `tls=REQUIRED` with `client_cert_required` binds every client to a cluster: with TLS
        optional or off a plain-text client joins any cluster, without certificates a TLS client
        does, and either can take a real node's id (its INIT then fails with DUPLICATE_NODE_ID).
        """
        if self.tls is not TlsSupported.REQUIRED:
            mode = "on (optional)" if self.tls is TlsSupported.SUPPORTED else "off"
            return f"--tls {mode}: plain-text clients may join any cluster without a certificate"
        if not self.client_cert_required:
            return "--client-cert-required off: any TLS client may join any cluster"
        return None

    def validate(self) -> None:
        """Raise ValueError with a one-line fix for an impossible setting."""
        if not 1 <= self.heartbeat_min_ms <= self.heartbeat_max_ms:
            raise ValueError("heartbeat range: need 1 <= --heartbeat-min <= --heartbeat-max")
        if not 1.0 <= self.dpd_coefficient <= 1000:
            raise ValueError("--dpd-coefficient must be between 1.0 and 1000")
        if self.max_receive_size < 16 or self.max_send_size < 16:
            raise ValueError("message size limits must be at least 16 bytes")
        if self.max_send_buffers < 2:
            raise ValueError("max send buffers must be at least 2")
        if self.max_clients < 0:
            raise ValueError("--max-clients must be 0 (unlimited) or positive")
        if not 0.1 <= self.preinit_timeout <= 3600:
            raise ValueError("--preinit-timeout must be between 0.1 and 3600 seconds")
        if not 1 <= self.preinit_per_source <= self.preinit_max:
            raise ValueError("need 1 <= --preinit-per-source <= --preinit-max")
        if self.fd_reserve < 16:
            raise ValueError("--fd-reserve must be at least 16")
        if not 0 <= self.tls_handshake_threads <= 16:
            raise ValueError("--tls-handshake-threads must be between 0 and 16")
