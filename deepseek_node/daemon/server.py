"""Running the daemon: uvicorn with TLS, signals, and exit codes systemd can act on.

* The socket listens before the model loads, so liveness answers at once and readiness goes 503 -> 200.
* SIGTERM/SIGINT: readiness drops and new generation requests get 503 at once; requests already admitted
  (running or queued) finish within `engine.shutdown_grace_s`; then the process exits 0. uvicorn's own
  handler would re-raise the signal after shutdown (exit by signal, not 0), hence the subclass.
* SIGHUP: the certificate chain, key and client CA are read again into the live TLS context: new
  handshakes get the new certificate, open connections and the engine are untouched. A certificate that
  cannot be loaded leaves the served one in place (and logs why).
* A model that cannot load, or an engine thread that dies, exits 1 so systemd's Restart= brings the node
  back; a configuration that cannot work exits 2 before listening (restarting would not help).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from deepseek_node.daemon.config import DaemonConfig
from deepseek_node.daemon.gateway.connections import protocol_options

__all__ = ["DaemonServer", "make_server", "reload_tls", "run"]

log = logging.getLogger("deepseek_node.daemon")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class DaemonServer(uvicorn.Server):
    """uvicorn.Server that drains the engine on the first signal and exits 0 instead of re-raising it."""

    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self.state = state
        self.exit_code = EXIT_OK
        self.tls_files: tuple[Any, Any, Any] | None = None  # cert, key, client CA: what SIGHUP re-reads

    def reload_tls(self, sig: int | None = None, frame: Any = None) -> bool:
        """SIGHUP handler: pick up renewed certificate files without touching connections or the engine."""
        if self.tls_files is None or self.config.ssl is None:
            log.warning("reload requested but the daemon serves plain HTTP: nothing to reload")
            return False
        ok = reload_tls(self.config.ssl, *self.tls_files)
        metrics = getattr(self.state, "metrics", None)
        if ok and metrics is not None:
            metrics.served_certificate(Path(self.tls_files[0]))  # the expiry gauge follows the new one
        return ok

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            log.info("signal %s: no longer admitting; finishing admitted requests", signal.Signals(sig).name)
            self.state.draining = True
            self.state.engine.begin_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def fail(self, reason: str) -> None:
        """Called (from any thread) when the engine cannot serve any more: exit 1 for systemd to restart."""
        log.error("%s: exiting for a restart", reason)
        self.exit_code = EXIT_FAILED
        self.should_exit = True


def make_server(config: DaemonConfig, state: Any, app: Any) -> DaemonServer:
    s = config.server
    uv_config = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
        ssl_keyfile=str(s.tls_key) if s.tls_key else None,
        timeout_graceful_shutdown=math.ceil(config.engine.shutdown_grace_s),  # 0: cancel at once
        access_log=False,  # the audit log has one line per request already
        log_config=None,
        server_header=False,
        **protocol_options(s),
        lifespan="on",
        timeout_keep_alive=30,
    )
    if s.tls:
        uv_config.load()  # builds the SSL context, which is then narrowed before the first handshake
        harden_tls(uv_config.ssl, s.tls_min_version, s.tls_client_ca)
    server = DaemonServer(uv_config, state)
    if s.tls:
        server.tls_files = (s.tls_cert, s.tls_key, s.tls_client_ca)
    return server


# Forward-secret AEAD suites for TLS 1.2 where it is allowed (TLS 1.3 suites are all AEAD already).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


def harden_tls(context: ssl.SSLContext, min_version: str, client_ca: Any = None) -> None:
    """TLS 1.3 only by default; with 1.2 allowed, only ECDHE + AEAD suites; mutual TLS when a CA is set."""
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED


def reload_tls(context: ssl.SSLContext, cert: Any, key: Any, client_ca: Any = None) -> bool:
    """Load the certificate chain and key (and client CA) again into `context`; False if they are unusable.

    The files are tried on a scratch context first, so an unreadable file or a key that does not match the
    certificate leaves the live context serving what it served. Each new handshake copies the context's
    certificate, so connections already open keep theirs. A CA removed from the client CA file stays
    trusted until a restart (an SSLContext can add trust anchors, never drop them): that is logged.
    """
    try:
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        scratch.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            scratch.load_verify_locations(cafile=str(client_ca))
    except (OSError, ssl.SSLError) as exc:
        log.error(
            "TLS reload failed, still serving the previous certificate: %s (cert %s, key %s%s); "
            "fix the files and reload again",
            exc,
            cert,
            key,
            f", client CA {client_ca}" if client_ca is not None else "",
        )
        return False
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        kept = [ca for ca in context.get_ca_certs() if ca not in scratch.get_ca_certs()]
        context.load_verify_locations(cafile=str(client_ca))
        if kept:
            log.warning(
                "TLS reload: %d client CA(s) no longer in %s stay trusted until the daemon restarts",
                len(kept),
                client_ca,
            )
    log.info("TLS reload: now serving the certificate in %s", cert)
    return True


def setup_logging(level: str = "INFO") -> None:
    # Operational logs go to stderr; stdout carries only audit JSON lines when audit.path is null.
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "ContinuousBatchingLogger", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(config: DaemonConfig, *, log_level: str = "INFO") -> int:
    """Serve until a signal or a fatal engine error; the process exit code."""
    from deepseek_node.daemon.config import ConfigError
    from deepseek_node.daemon.gateway.api import create_app, wrap
    from deepseek_node.daemon.runtime import build_state, prepare

    setup_logging(log_level)
    # Until the reload handler is in place (after the certificate is first read), a reload must not kill
    # the process: SIGHUP's default action would, and systemd counts that as a clean exit.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The engine thread holds the GIL between kernel launches; a shorter switch interval lets the event
    # loop in sooner (CPython's default is 5 ms, a long stall for streaming responses).
    sys.setswitchinterval(float(os.environ.get("DEEPSEEK_NODE_SWITCH_INTERVAL", "0.0005")))
    try:
        plan = prepare(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    log.info("plan: %s", json.dumps(config.plan, sort_keys=True, default=str))
    log.info("load plan: %s", json.dumps(plan.describe(), sort_keys=True))
    for note in plan.notes:
        log.warning("%s", note)

    holder: dict[str, DaemonServer] = {}

    def on_fatal(reason: str) -> None:
        if "server" in holder:
            holder["server"].fail(reason)

    state = build_state(config, plan, on_fatal=on_fatal)
    app = create_app(state)
    server = make_server(config, state, wrap(app, state))
    holder["server"] = server
    signal.signal(signal.SIGHUP, server.reload_tls)  # systemctl reload (ExecReload=kill -HUP)
    scheme = "https" if config.server.tls else "http"
    log.info(
        "serving %s on %s://%s:%s", config.model.served_name, scheme, config.server.host, config.server.port
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind
        log.error("server failed to start (exit %s)", exc.code)
        return EXIT_FAILED
    except OSError as exc:
        log.error("server failed: %s", exc)
        return EXIT_FAILED
    return server.exit_code
