"""A hostile user's inputs: every one is refused with a clear `error:` line, exit 2, no traceback, no change.

Fast and hermetic: no lab, no network, no model is loaded and no server starts (serve's `run` is replaced by
a function that fails the test if it is ever reached).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from deepseek_node.bundle import manifest as m
from deepseek_node.cli.main import app

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def refused(result: Result, *needles: str, code: int = 2) -> str:
    """The command failed cleanly: the expected exit code, an `error:` line naming each needle."""
    text = " ".join(result.output.split())  # rich may wrap long lines
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "error:" in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def fake_model(root: Path, **config: object) -> Path:
    """A directory that passes every cheap model check (config sizes, tokenizer, safetensors header)."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512}
    cfg = {"model_type": "llama", "max_position_embeddings": 4096, **sizes, **config}
    (root / "config.json").write_text(json.dumps(cfg))
    header = b"{}"
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (root / "tokenizer.json").write_text("{}")
    return root


# --- plan ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("all: [unclosed\n", ["is not valid YAML", "line 2"]),
        ("just a string\n", ["holds a str, not a mapping of groups"]),
        (
            "all:\n  children:\n    inference_nodes:\n      hosts:\n        x1: [1, 2]\n",
            ["expected dictionary"],
        ),
    ],
)
def test_plan_unreadable_inventory(tmp_path: Path, content: str, needles: list[str]) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text(content)
    text = refused(invoke("plan", "-i", inv), *needles, "fix:")
    assert "<<< caused by >>>" not in text and "Invalid host pattern" not in text


def test_plan_inventory_paths(tmp_path: Path) -> None:
    refused(invoke("plan", "-i", tmp_path / "nope.yml"), "does not exist")
    refused(invoke("plan", "-i", tmp_path), "holds no inventory file")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "hosts.yml").write_text("inference_nodes:\n  hosts:\n    h1:\n")
    (tmp_path / "group_vars" / "all.yml").write_text("- a list\n")
    refused(invoke("plan", "-i", tmp_path), "group_vars/all.yml holds a list, not a mapping of variables")


def test_plan_bad_host_values_are_all_named(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "inference_nodes:\n  hosts:\n"
        "    h1: {deepseek_hardware_profile: nope-9000, deepseek_model: deepseek-r1}\n"
        "    h2: {deepseek_hardware_profile: cpu-only, deepseek_model: deepseek-r1,"
        " deepseek_hardware_overrides: {host_memory_gib: -8}, deepseek_max_context: -5}\n"
    )
    refused(
        invoke("plan", "-i", inv),
        "host h1: deepseek_hardware_profile: 'nope-9000' is not a known hardware profile",
        "host h2: deepseek_hardware_overrides.host_memory_gib",
        "host h2: deepseek_max_context: -5",
    )


def test_plan_bad_model_flag_is_reported_once(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("inference_nodes:\n  hosts:\n    a: {}\n    b: {}\n    c: {}\n")
    text = refused(invoke("plan", "-i", inv, "--model", "deepseek-r2"), "--model: 'deepseek-r2'")
    assert text.count("deepseek-r2") == 1 and "host " not in text


def test_plan_model_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path in (afile, tmp_path / "nope"):
        refused(invoke("plan", "--hardware", "cpu-only", "--model-dir", path), "is not a directory")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    refused(invoke("plan", "--hardware", "cpu-only", "--model-dir", bad), "config.json cannot be read")


# --- bundle verify ------------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("hi")
    m.write_manifest(root, {})
    return root


@pytest.mark.parametrize("kind", ["file-link", "dir-link", "fifo"])
def test_verify_refuses_links_and_special_files(bundle: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    entry = bundle / "sub" / "odd"
    if kind == "file-link":
        entry.symlink_to(outside / "secret")
    elif kind == "dir-link":
        entry.symlink_to(outside)
    else:
        os.mkfifo(entry)  # reading it would hang: it must never be opened
    refused(invoke("bundle", "verify", bundle), "symlink or special file", "sub/odd", code=1)


def test_verify_refuses_a_manifest_written_over_a_link(bundle: Path, tmp_path: Path) -> None:
    (bundle / "sub" / "link").symlink_to(tmp_path)
    with pytest.raises(m.BundleError, match="symlinks or special files"):
        m.write_manifest(bundle, {})


_SHA = "0" * 64


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"a\u0000b": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"./sub/a.txt": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"sub//a.txt": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"sub/../../x": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"/etc/passwd": {"size": 1, "sha256": _SHA}}, "malformed"),
        ({"sub/a.txt": {"size": True, "sha256": _SHA}}, "malformed"),
        ({"sub/a.txt": {"size": -1, "sha256": _SHA}}, "malformed"),
        ({"sub/a.txt": {"size": 2, "sha256": "x"}}, "malformed"),
        ({"sub/a.txt": "x"}, "malformed"),
    ],
)
def test_verify_refuses_malformed_entries(bundle: Path, files: dict[str, object], needle: str) -> None:
    (bundle / m.MANIFEST).write_text(json.dumps({"format": 1, "files": files}))
    refused(invoke("bundle", "verify", bundle), needle, "rebuild the bundle")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "not valid JSON"),
        ("{oops", "not valid JSON"),
        ("[]", "format-1"),
        ('{"format": true, "files": {}}', "format-1"),
        ('{"format": 1, "files": []}', "format-1"),
    ],
)
def test_verify_refuses_corrupt_manifests(bundle: Path, content: str, needle: str) -> None:
    (bundle / m.MANIFEST).write_text(content)
    refused(invoke("bundle", "verify", bundle), needle)


def test_verify_refuses_odd_manifests_and_paths(bundle: Path, tmp_path: Path) -> None:
    refused(invoke("bundle", "verify", tmp_path / "nope"), "is not a directory")
    refused(invoke("bundle", "verify", bundle / "sub" / "a.txt"), "is not a directory")
    real = bundle / m.MANIFEST
    real.rename(bundle / "real.json")
    real.symlink_to(bundle / "real.json")
    refused(invoke("bundle", "verify", bundle), "is not a regular file")
    real.unlink()
    refused(invoke("bundle", "verify", bundle), "is missing")
    real.mkdir()
    refused(invoke("bundle", "verify", bundle), "is not a regular file")


def test_standalone_verifier_refuses_links_too(bundle: Path, tmp_path: Path) -> None:
    (bundle / "sub" / "link").symlink_to(tmp_path)
    report = m.verify_bundle(bundle)
    assert not report.ok and report.unsafe == ["sub/link"]
    assert m._main(["verify", str(bundle)]) == 1


# --- bundle build -------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return fake_model(tmp_path / "model")


def build(out: Path, model: Path, *extra: str) -> Result:
    return invoke(
        "bundle", "build", "--out", out, "--model-dir", model, "--skip-role", "no_such_role", *extra
    )


def test_build_out_must_be_a_directory_we_may_fill(tmp_path: Path, model_dir: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    before = tree(tmp_path)
    refused(build(afile, model_dir), "exists and is not a directory")
    refused(build(afile / "sub", model_dir), "is not a directory: choose an --out path under a directory")
    refused(build(model_dir / "bundle", model_dir), "is inside the model directory")
    (tmp_path / "b.partial").write_text("mine")
    refused(build(tmp_path / "b", model_dir), "b.partial", "is not a directory")
    (tmp_path / "b.partial").unlink()
    assert tree(tmp_path) == before and afile.read_text() == "keep"


def test_failed_build_leaves_no_parent_directories(tmp_path: Path, model_dir: Path) -> None:
    refused(build(tmp_path / "new" / "deep" / "out", model_dir), "cannot skip unknown role")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "config.json").write_text("{garbage"), "cannot be read as JSON"),
        (lambda d: (d / "config.json").write_text("[1]"), "is not a JSON object"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer files"),
    ],
)
def test_build_checks_the_model_before_anything(
    tmp_path: Path, model_dir: Path, damage: Callable[[Path], object], needle: str
) -> None:
    damage(model_dir)
    refused(build(tmp_path / "out", model_dir), needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_build_model_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(build(tmp_path / "out", afile), "does not exist or is not a directory")


def test_build_engine_values(tmp_path: Path, model_dir: Path) -> None:
    before = tree(tmp_path)
    choices = "choose from none, vllm-cpu, vllm-cuda"
    refused(
        build(tmp_path / "out", model_dir, "--engine", "vllm-tpu"), "'vllm-tpu' is not an engine", choices
    )
    refused(
        build(tmp_path / "out", model_dir, "--engine", "vllm-cpu,cuda"), "--engine 'cuda' is not", choices
    )
    refused(
        build(tmp_path / "out", model_dir, "--engine", "vllm-cpu", "--engine", "VLLM-CUDA"), "'VLLM-CUDA'"
    )
    refused(build(tmp_path / "out", model_dir, "--engine", "none,vllm-cpu"), "cannot be combined")
    refused(
        build(tmp_path / "out", model_dir, "--engine", "vllm-cpu", "--suite", "sid"),
        "--suite 'sid' is not a release",
        "choose from bookworm, trixie",
    )
    assert tree(tmp_path) == before


# --- model make-tiny (all refused before torch is imported) -------------------------------------------


def test_make_tiny_refuses_bad_outputs(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine").write_text("keep")
    before = tree(tmp_path)
    refused(invoke("model", "make-tiny", "--out", afile), "exists and is not a directory")
    refused(invoke("model", "make-tiny", "--out", afile / "sub"), "is not a directory")
    refused(invoke("model", "make-tiny", "--out", full), "is not empty")
    refused(
        invoke("model", "make-tiny", "--out", tmp_path / "m", "--arch", "llama", "--hidden-size", "18"),
        "not a multiple of the 4 attention heads",
    )
    refused(invoke("model", "make-tiny", "--out", tmp_path / "m", "--arch", "gpt2"), "not supported")
    assert tree(tmp_path) == before


# --- serve (never reaches the server) -----------------------------------------------------------------


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepseek_node.daemon.server as server

    def forbidden(*_a: object, **_k: object) -> int:
        raise AssertionError("serve got past its input checks")

    monkeypatch.setattr(server, "run", forbidden)


@pytest.fixture
def port() -> Iterator[int]:
    """A port nobody listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        number = s.getsockname()[1]
    yield number


def serve(model: Path, port: int, *extra: str | Path) -> Result:
    return invoke("serve", "--model-dir", model, "--port", str(port), "--device", "cpu", *extra)


def test_serve_model_dir_problems(tmp_path: Path, port: int, no_server: None) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(serve(tmp_path / "nope", port), "does not exist or is not a directory")
    refused(serve(afile, port), "does not exist or is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(serve(empty, port), "no config.json", "make-tiny")

    garbage = fake_model(tmp_path / "garbage")
    (garbage / "config.json").write_text("{garbage")
    refused(serve(garbage, port), "cannot read config.json")
    # Without sizes transformers would build a default 7B model in memory: refused up front.
    refused(serve(fake_model(tmp_path / "sizes", hidden_size=-64, vocab_size=None), port), "lacks positive")
    weights = fake_model(tmp_path / "weights")
    (weights / "model.safetensors").write_bytes(b"garbage!garbage!")
    refused(serve(weights, port), "is not a safetensors file")
    tok = fake_model(tmp_path / "tok")
    (tok / "tokenizer.json").write_text("")
    refused(serve(tok, port), "tokenizer.json is not a valid JSON object")
    refused(serve(fake_model(tmp_path / "ctx"), port, "--max-context", "99999"), "lower --max-context")


def test_serve_flag_problems(tmp_path: Path, port: int, no_server: None) -> None:
    model = fake_model(tmp_path / "m")
    for bad in ("0", "70000", "abc"):
        result = serve(model, port, "--port", bad)
        assert result.exit_code == 2 and "--port" in result.output and "Traceback" not in result.output
    short = tmp_path / "short.key"
    short.write_text("tooshort\n")
    result = refused(serve(model, port, "--api-key-file", str(short)), "--api-key-file", "at least 16")
    assert "API key (shown once" not in result
    refused(serve(model, port, "--api-key-file", str(tmp_path / "none.key")), "--api-key-file", "cannot read")
    refused(serve(model, port, "--engine", "turbo"), "--engine 'turbo' is not an engine")
    refused(serve(model, port, "--host", "999.1.1.1"), "--host '999.1.1.1' is not an address")


def test_serve_refuses_a_port_in_use(tmp_path: Path, no_server: None) -> None:
    model = fake_model(tmp_path / "m")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        refused(serve(model, busy), f"cannot listen on 127.0.0.1:{busy}", "choose another --port")


def test_serve_tls_problems(tmp_path: Path, port: int, no_server: None) -> None:
    model = fake_model(tmp_path / "m")
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    encrypted = tmp_path / "enc.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    refused(serve(model, port, "--tls-cert", cert), "go together")
    refused(serve(model, port, "--tls-key", key), "go together")
    refused(serve(model, port, "--tls-cert", tmp_path / "no.pem", "--tls-key", key), "does not exist")
    refused(serve(model, port, "--tls-cert", tmp_path, "--tls-key", key), "is not a file")
    refused(serve(model, port, "--tls-cert", junk, "--tls-key", key), "is not a PEM certificate")
    refused(serve(model, port, "--tls-cert", cert, "--tls-key", junk), "is not a PEM private key")
    refused(serve(model, port, "--tls-cert", cert, "--tls-key", encrypted), "passphrase-protected")
    refused(serve(model, port, "--tls-cert", cert, "--tls-key", key), "cannot be used")
