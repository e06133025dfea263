"""`provision doctor`: recorded readings -> findings and fixes; the collector for real on this machine and a
lab target; the CLI's JSON and exit code against a recorded host."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deepseek_node.cli import doctor as doctor_cli
from deepseek_node.cli.main import app
from deepseek_node.doctor import collect
from deepseek_node.doctor.checks import Finding, Thresholds, check_certificate, run_checks, throttle_reasons
from deepseek_node.doctor.readings import CertReading, Readings
from deepseek_node.doctor.severity import Severity, exit_code
from deepseek_node.doctor.xid import XID, parse_xid_lines

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "doctor"


def recorded(name: str) -> Readings:
    return Readings.from_dict(json.loads((FIXTURES / name).read_text()))


def by_check(findings: list[Finding], check: str, severity: Severity | None = None) -> list[Finding]:
    return [f for f in findings if f.check == check and (severity is None or f.severity is severity)]


def fake_run(answers: dict[str, tuple[int, str, str]]) -> Any:
    """A command runner answering by argv[0] (and the first argument), like run_command."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        return answers.get(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}".strip()) or answers.get(
            argv[0], (127, "", "not found")
        )

    return run


# --- recorded NVML readings ----------------------------------------------------------------------------------


def test_healthy_host_is_all_ok() -> None:
    findings = run_checks(recorded("healthy_nvml.json"))
    assert {f.severity for f in findings} == {Severity.OK}, [
        f for f in findings if f.severity is not Severity.OK
    ]
    checks = {f.check for f in findings}
    assert {
        "gpu",
        "driver_library",
        "driver_cuda",
        "persistence",
        "throttle",
        "power_cap",
        "temperature",
    } <= checks
    assert {
        "ecc",
        "remapped_rows",
        "xid",
        "memory_headroom",
        "units",
        "health",
        "certificate",
        "disk",
    } <= checks
    assert exit_code(f.severity for f in findings) == 0


def test_unhealthy_host_findings_and_fixes() -> None:
    findings = run_checks(recorded("unhealthy_nvml.json"))

    [persist] = by_check(findings, "persistence", Severity.WARN)
    assert (
        "GPU 0" in persist.seen
        and "nvidia-smi -i 0 -pm 1" in persist.fix
        and "nvidia-persistenced" in persist.fix
    )

    throttle = by_check(findings, "throttle")
    power = next(f for f in throttle if "software power cap" in f.seen)
    assert power.severity is Severity.WARN and power.gpu == 0 and "nvidia-smi -i 0 -pl 700" in power.fix
    assert "SM 1095 of 1980 MHz" in power.seen
    thermal = next(f for f in throttle if "hardware thermal slowdown" in f.seen)
    assert thermal.severity is Severity.FAIL

    [cap] = by_check(findings, "power_cap", Severity.WARN)
    assert "500 W is below its default 700 W" in cap.seen

    temps = {f.gpu: f.severity for f in by_check(findings, "temperature")}
    assert temps == {0: Severity.FAIL, 1: Severity.WARN}

    [ecc] = by_check(findings, "ecc", Severity.FAIL)
    assert ecc.gpu == 1 and "2 uncorrected" in ecc.seen and "nvidia-smi -r -i 1" in ecc.fix
    [remap] = by_check(findings, "remapped_rows", Severity.WARN)
    assert remap.gpu == 1 and "pending" in remap.seen and "nvidia-smi -r -i 1" in remap.fix

    xids = {(f.gpu, f.seen.split(" on ")[0]): f for f in by_check(findings, "xid")}
    assert xids[(1, "Xid 48")].severity is Severity.FAIL and "double-bit ECC" in xids[(1, "Xid 48")].seen
    assert xids[(1, "Xid 63")].severity is Severity.WARN
    assert xids[(0, "Xid 79")].severity is Severity.FAIL
    assert "fallen off the bus" in xids[(0, "Xid 79")].seen and "reboot" in xids[(0, "Xid 79")].fix

    [cuda] = by_check(findings, "driver_cuda", Severity.WARN)
    assert "minor version compatibility" in cuda.seen and "550.54.15" in cuda.fix

    [mem] = by_check(findings, "memory_headroom", Severity.FAIL)
    assert "82.5 GiB" in mem.seen and "does not fit" in mem.seen

    units = {f.seen.split()[0]: f for f in by_check(findings, "units")}
    assert units["deepseek-node"].severity is Severity.FAIL
    assert "failed/failed (result: exit-code)" in units["deepseek-node"].seen
    assert "journalctl -u deepseek-node" in units["deepseek-node"].fix
    assert units["deepseek-node-engine"].severity is Severity.FAIL  # auto-restart loop

    [health] = by_check(findings, "health", Severity.FAIL)
    assert "Connection refused" in health.seen
    [cert] = by_check(findings, "certificate", Severity.WARN)
    assert "expires in 9.0 day(s)" in cert.seen and "--tags tls" in cert.fix
    [disk] = by_check(findings, "disk", Severity.FAIL)
    assert "(2 %)" in disk.seen
    assert exit_code(f.severity for f in findings) == 2


def test_thresholds_are_variables_and_bad_ones_are_named() -> None:
    r = recorded("unhealthy_nvml.json")
    r.thresholds = {"deepseek_doctor_temperature_warn_c": 85, "deepseek_doctor_temperature_fail_c": "90"}
    temps = {f.gpu: f.severity for f in run_checks(r) if f.check == "temperature"}
    assert temps == {0: Severity.WARN}  # 86 °C warns, 81 °C passes
    with pytest.raises(ValueError, match="deepseek_doctor_cert_warn_days must be a number"):
        Thresholds.from_vars({"deepseek_doctor_cert_warn_days": "two weeks"})
    with pytest.raises(ValueError, match="warning must come first"):
        Thresholds.from_vars({"temperature_warn_c": 90, "temperature_fail_c": 85})


def test_certificate_expired_and_valid() -> None:
    r = recorded("healthy_nvml.json")
    now = dt.datetime(2027, 10, 3, tzinfo=dt.UTC)
    [f] = check_certificate(r, Thresholds(), now=now)
    assert f.severity is Severity.FAIL and "expired 1 day(s) ago" in f.seen
    r.certificate = CertReading(path="/etc/deepseek-node/tls/server.crt", error="not found")
    assert check_certificate(r, Thresholds())[0].severity is Severity.FAIL


def test_throttle_reason_names() -> None:
    assert throttle_reasons(0x1) == ["idle"]
    assert throttle_reasons(0x4 | 0x40) == ["software power cap", "hardware thermal slowdown"]


# --- nvidia-smi XML, kernel log, systemctl, driver/library -----------------------------------------------------


def test_nvidia_smi_xml_current_driver() -> None:
    got = collect.smi_readings((FIXTURES / "nvidia_smi_h100_throttled.xml").read_text())
    assert got["driver_version"] == "550.127.05" and got["cuda_driver_version"] == "12.4"
    g0, g1 = got["gpus"]
    assert g0["clocks_event_reasons"] == 0x4 | 0x8 and g1["clocks_event_reasons"] == 0x1
    assert (g0["power_limit_w"], g0["default_power_limit_w"], g0["temperature_c"]) == (450.0, 700.0, 83.0)
    assert (
        g0["remap_pending"] is True
        and g0["ecc_volatile_uncorrected"] == 1
        and g0["persistence_mode"] is False
    )
    assert g0["memory_total_mib"] == 81559 and g0["sm_clock_mhz"] == 1275

    r = Readings.from_dict({"host": "h", "gpu_source": "nvidia-smi", **got})
    findings = run_checks(r)
    throttle = {f.seen.split(": ")[1].split(" (")[0]: f.severity for f in by_check(findings, "throttle")}
    assert throttle == {"software power cap": Severity.WARN, "hardware slowdown": Severity.FAIL}
    assert by_check(findings, "remapped_rows", Severity.WARN)[0].gpu == 0
    assert by_check(findings, "ecc", Severity.FAIL)[0].gpu == 0
    assert by_check(findings, "power_cap", Severity.WARN)[0].gpu == 0
    assert by_check(findings, "temperature", Severity.WARN)[0].gpu == 0
    assert by_check(findings, "persistence", Severity.WARN)


def test_nvidia_smi_xml_older_driver_names() -> None:
    got = collect.smi_readings((FIXTURES / "nvidia_smi_a100_r470.xml").read_text())
    [g] = got["gpus"]
    assert g["clocks_event_reasons"] == 0x20 | 0x40 and g["power_limit_w"] == 400.0
    assert (g["ecc_volatile_uncorrected"], g["ecc_aggregate_uncorrected"]) == (0, 2)
    findings = run_checks(Readings.from_dict({"host": "h", **got}))
    assert by_check(findings, "remapped_rows", Severity.FAIL)  # remap failure: RMA
    assert by_check(findings, "ecc", Severity.WARN)  # lifetime only
    assert by_check(findings, "temperature", Severity.FAIL)
    assert not by_check(findings, "power_cap", Severity.WARN)


def test_journal_excerpt_gives_xid_79_and_48() -> None:
    journal = (FIXTURES / "journal_xid.txt").read_text()
    got = collect.xid_lines(fake_run({"journalctl": (0, journal, "")}))
    assert got["source"] == "journal" and len(got["lines"]) == 3
    events = parse_xid_lines(got["lines"])
    assert [(e.code, e.bus_id) for e in events] == [
        (48, "0000:2a:00"),
        (63, "0000:2a:00"),
        (79, "0000:18:00"),
    ]
    assert events[2].when == "2026-11-20T09:02:40+0000"


def test_kernel_log_falls_back_to_dmesg_and_says_when_unreadable() -> None:
    line = "[ 812.5] NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    got = collect.xid_lines(
        fake_run(
            {"journalctl": (1, "", "No journal files were found."), "dmesg --time-format": (0, line, "")}
        )
    )
    assert got["source"] == "dmesg" and got["lines"] == [line]
    got = collect.xid_lines(
        fake_run({"journalctl": (1, "", "denied"), "dmesg": (1, "", "Operation not permitted")})
    )
    assert got["source"] is None and "Operation not permitted" in got["error"]
    r = Readings.from_dict({"host": "h", "kernel_log": got})
    [f] = [f for f in run_checks(r) if f.check == "xid"]
    assert f.severity is Severity.WARN and "root" in f.fix


def test_every_usual_xid_code_has_a_meaning() -> None:
    for code in (13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120):
        assert XID[code].meaning and XID[code].fix


def test_systemctl_show_failed_gateway_and_absent_engine() -> None:
    units = collect.parse_systemctl_show((FIXTURES / "systemctl_show.txt").read_text())
    r = Readings.from_dict({"host": "h", "systemd": {"units": units}})
    found = {f.seen.split()[0]: f.severity for f in run_checks(r) if f.check == "units"}
    assert found == {"deepseek-node": Severity.FAIL, "deepseek-node-engine": Severity.OK}


def test_driver_library_mismatch_pending_reboot(tmp_path: Path) -> None:
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.127.05  Tue Oct 22 23:29:37 UTC 2024\n"
    )
    (tmp_path / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.560.35.03").write_text("")

    class MismatchNvml:
        def nvmlInit(self) -> None:
            raise RuntimeError("Driver/library version mismatch")

    smi = (
        18,
        "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 560.35\n",
        "",
    )
    gpus = collect.gpu_readings(fake_run({"nvidia-smi": smi}), MismatchNvml())
    assert gpus["source"] == "none" and "mismatch" in gpus["error"]
    r = Readings.from_dict(
        {
            "host": "h",
            "gpu_error": gpus["error"],
            "kernel_module_version": collect.kernel_module_version(str(tmp_path)),
            "library_version": collect.library_version(str(tmp_path)),
        }
    )
    [f] = [f for f in run_checks(r) if f.check == "driver_library"]
    assert f.severity is Severity.FAIL
    assert "kernel module 550.127.05 loaded, user-space library 560.35.03 installed" in f.seen
    assert "reboot" in f.fix


def test_daemon_config_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(
        '# managed\nmodel:\n  path: "/var/lib/deepseek-node/models/m"\n  device: "cuda"\n'
        'server:\n  port: 9443\n  tls_cert: "/etc/x/server.crt"\nauth:\n  api_keys:\n    - id: "ops"\n'
        'plan: {"expected_gpu_memory_gib": 61.2, "tp": 2, "pp": 1}\n'
    )
    monkeypatch.setitem(sys.modules, "yaml", None)  # the host's python3 may have no PyYAML
    got = collect.daemon_config(str(cfg))
    assert got["model"]["device"] == "cuda" and got["server"]["port"] == 9443
    assert got["plan"]["expected_gpu_memory_gib"] == 61.2


def test_certificate_expiry_is_read_from_a_real_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-a01")])
    not_after = dt.datetime(2031, 5, 17, 12, 0, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "server.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert collect.cert_not_after(str(path))["not_after"] == not_after.isoformat()


# --- the collector for real ----------------------------------------------------------------------------------


def test_collector_runs_here_with_the_standard_library_only() -> None:
    """This machine has no GPU: the collector (system python, no site-packages) must say so cleanly."""
    script = Path(collect.__file__)
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "DEEPSEEK_DOCTOR_OPTIONS": json.dumps({"models_dir": "/tmp", "nvml_paths": []}),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert p.returncode == 0, p.stderr
    r = Readings.from_dict(json.loads(p.stdout))
    assert r.gpu_source == "none" and r.gpus == [] and r.gpu_error
    [gpu] = [f for f in run_checks(r) if f.check == "gpu"]
    assert gpu.severity is Severity.OK and gpu.seen.startswith("no GPU")
    assert r.disk.total_bytes and r.disk.measured_at == "/tmp"


# --- the CLI -------------------------------------------------------------------------------------------------


def _recorded_gather(*names: str) -> Any:
    def gather(inventory: Path | None, limit: str | None, artifacts_dir: Path | None, verbose: int) -> Any:
        readings = {}
        for n in names:
            r = recorded(n)
            readings[r.host] = r
        return doctor_cli.Gathered(readings=readings)

    return gather


@pytest.mark.parametrize(
    ("fixture", "code", "status"),
    [("healthy_nvml.json", 0, "ok"), ("unhealthy_nvml.json", 2, "fail")],
)
def test_cli_json_and_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fixture: str, code: int, status: str
) -> None:
    monkeypatch.setattr(doctor_cli, "gather", _recorded_gather(fixture))
    result = CliRunner().invoke(app, ["doctor", "-i", str(tmp_path), "--json"])
    assert result.exit_code == code, result.output
    report = json.loads(result.stdout)
    assert report["status"] == status and report["exit_code"] == code
    [host] = report["hosts"]
    assert host["status"] == status and all(
        {"check", "severity", "seen", "fix"} <= set(f) for f in host["findings"]
    )


def test_cli_warnings_only_exit_1_and_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    r = recorded("healthy_nvml.json")
    r.gpus[1].persistence_mode = False

    def gather(*_: Any) -> doctor_cli.Gathered:
        return doctor_cli.Gathered(readings={r.host: r}, unreachable={})

    monkeypatch.setattr(doctor_cli, "gather", gather)
    result = CliRunner().invoke(app, ["doctor", "-i", str(tmp_path), "--problems"])
    assert result.exit_code == 1, result.output
    # --problems leaves the passing checks out of the table.
    assert "persistence" in result.stdout and "overall: warn" in result.stdout
    assert "disk" not in result.stdout and "certificate" not in result.stdout


def test_cli_unreachable_host_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def gather(*_: Any) -> doctor_cli.Gathered:
        return doctor_cli.Gathered(
            unreachable={"gpu-c03": "unreachable: ssh: connect to host port 22: No route"}
        )

    monkeypatch.setattr(doctor_cli, "gather", gather)
    result = CliRunner().invoke(app, ["doctor", "-i", str(tmp_path), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["hosts"][0]["findings"][0]["check"] == "reachable"


def test_cli_limit_needs_inventory() -> None:
    result = CliRunner().invoke(app, ["doctor", "--limit", "gpu-a01"])
    assert result.exit_code == 2 and "--limit needs an inventory" in result.output


def test_readings_collector_from_runner_events() -> None:
    data = json.loads((FIXTURES / "healthy_nvml.json").read_text())
    c = doctor_cli.ReadingsCollector()
    c(
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "gpu-a01",
                "task": doctor_cli.COLLECT_TASK,
                "res": {"stdout": json.dumps(data)},
            },
        }
    )
    c(
        {
            "event": "runner_on_unreachable",
            "event_data": {"host": "gpu-a02", "res": {"msg": "Connection timed out"}},
        }
    )
    c(
        {
            "event": "runner_on_failed",
            "event_data": {
                "host": "gpu-a03",
                "res": {"msg": "non-zero return code", "stderr": "python3: not found"},
            },
        }
    )
    g = c.gathered
    assert g.readings["gpu-a01"].host == "gpu-a01" and len(g.readings["gpu-a01"].gpus) == 2
    assert "timed out" in g.unreachable["gpu-a02"] and "collector failed" in g.unreachable["gpu-a03"]


# --- a lab target through Ansible ----------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.slow
def test_doctor_reads_a_lab_target_through_ansible(
    lab, lab_inventory: Path, lab_hosts: list[str], tmp_path: Path
) -> None:
    """A Debian 12 target without a GPU (rolled out or not, as earlier tests left it): readings come back
    and say what is there."""
    gathered = doctor_cli.gather_inventory(lab_inventory, lab_hosts[0], tmp_path / "artifacts", 0)
    assert not gathered.unreachable, gathered.unreachable
    r = gathered.readings[lab_hosts[0]]
    assert r.gpu_source == "none" and r.kernel_log.source in ("journal", "dmesg")
    findings = run_checks(r)
    assert by_check(findings, "gpu", Severity.OK)[0].seen.startswith("no GPU")
    units = {f.seen.split()[0]: f.severity for f in by_check(findings, "units")}
    active = lab.run(lab_hosts[0], "systemctl is-active deepseek-node", check=False).stdout.strip()
    # Not installed (a bare target): roll the node out; serving (a converged one): ok.
    assert units["deepseek-node"] is (Severity.OK if active == "active" else Severity.FAIL), (active, units)
    # The run keeps its summary like every other run, and the key never reaches the artifacts.
    [summary] = list((tmp_path / "artifacts").glob("*/summary.json"))
    assert json.loads(summary.read_text())["hosts"][lab_hosts[0]]["failed"] == 0


def _tls_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, as the tls role lays them out."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start, end = (
        dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
    )
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("node"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_health_probe_over_tls_with_the_hosts_ca(tmp_path: Path) -> None:
    """The collector's /health probe against a real TLS server: the CA verifies it, the key reaches it."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ca, cert, key = _tls_pair(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health/live":
                code, body = 200, b'{"status":"alive"}'
            elif self.headers.get("Authorization") == "Bearer sk-probe":
                code, body = 503, b'{"error":{"message":"not ready: loading"},"status":"loading"}'
            else:
                code, body = 401, b'{"error":{"message":"missing or invalid API key"}}'
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        loading = collect.health(port, str(ca), "sk-probe")
        no_key = collect.health(port, str(ca), "")
        wrong_ca = collect.health(port, str(cert), "sk-probe")  # a CA that did not sign it
    finally:
        server.shutdown()
    assert (loading["live_status"], loading["ready_status"]) == (200, 503)
    [f] = [f for f in run_checks(Readings.from_dict({"host": "h", "health": loading})) if f.check == "health"]
    assert f.severity is Severity.FAIL and "not ready: loading" in f.seen
    [f] = [f for f in run_checks(Readings.from_dict({"host": "h", "health": no_key})) if f.check == "health"]
    assert f.severity is Severity.WARN and "no API key" in f.seen and "inference_daemon_api_keys" in f.fix
    assert wrong_ca["live_status"] is None and "CERTIFICATE_VERIFY_FAILED" in (wrong_ca["error"] or "")


# --- readings recorded by the collector on a real H100 (driver 580.159.04), NVML and nvidia-smi paths ------

GPU_CHECKS = {"gpu", "persistence", "throttle", "power_cap", "temperature", "ecc", "remapped_rows"}


@pytest.mark.parametrize("name", ["recorded_h100_nvml.json", "recorded_h100_smi.json"])
def test_a_real_idle_h100_passes_every_gpu_check(name: str) -> None:
    r = recorded(name)
    findings = [f for f in run_checks(r) if f.check in GPU_CHECKS]
    assert {f.check for f in findings} == GPU_CHECKS
    # Idle clocks (event reason 0x1) are not throttling.
    assert all(f.severity is Severity.OK for f in findings), [
        f for f in findings if f.severity is not Severity.OK
    ]


def test_nvml_and_nvidia_smi_read_the_same_h100() -> None:
    nvml = json.loads((FIXTURES / "recorded_h100_nvml.json").read_text())
    smi = json.loads((FIXTURES / "recorded_h100_smi.json").read_text())
    assert (nvml["gpu_source"], smi["gpu_source"]) == ("nvml", "nvidia-smi")
    keys = (
        "name",
        "persistence_mode",
        "clocks_event_reasons",
        "memory_total_mib",
        "ecc_enabled",
        "remap_pending",
    )
    assert [nvml["gpus"][0][k] for k in keys] == [smi["gpus"][0][k] for k in keys]
    from_xml = collect.smi_readings((FIXTURES / "recorded_h100_nvidia_smi_q.xml").read_text())
    assert from_xml["driver_version"] == nvml["driver_version"] == "580.159.04"
    assert from_xml["gpus"][0]["memory_total_mib"] == 81559
