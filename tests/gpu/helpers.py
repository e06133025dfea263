"""What the GPU lab test puts together: a GPU test bundle and the recorded hardware a lab host pretends to have.

The bundle is built like an operator's (deepseek_node.bundle.build with a spec, so the nvidia_driver role's
real Debian packages come in through its defaults) without the CUDA toolkit's ~1.5 GiB, plus stand-ins for
what only NVIDIA's repositories carry (Fabric Manager, container toolkit) and for the CUDA toolkit.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from deepseek_node.bundle.build import BundleSpec, build_bundle
from deepseek_node.gpu import upstream_version
from tests.fixtures.standin_debs import add_debs_to_bundle, build_standins

# The hardware root the lab host's probe reads instead of /sys (preflight_hw_root).
FAKE_HW_ROOT = "/srv/deepseek-test-hw"
# 4 NVSwitches of an HGX H100 board (device 0x22a3, PCI class 0x0680) and Secure Boot on. No GPUs: the lab
# host installs the stack as a golden image (deepseek_gpu_stack: always).
NVSWITCH_ADDRESSES = ("0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0")
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
MOKUTIL_STANDIN_PATH = "/usr/local/sbin/mokutil"
MOKUTIL_STATE = "/var/lib/deepseek-standin-mokutil"

# mokutil writes EFI variables, which a container does not have: this stand-in, ahead of the real mokutil
# on PATH, keeps the same answers in a state directory so the enrolment staging can be checked.
MOKUTIL_STANDIN = r"""#!/usr/bin/python3
# deepseek-node test stand-in for mokutil: lab containers have no EFI variables. Same output as mokutil.
import hashlib, os, sys

STATE = "@STATE@"
args = sys.argv[1:]


def fp(path):
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()


def listed(kind):
    d = os.path.join(STATE, kind)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


if args[:1] == ["--sb-state"]:
    print("SecureBoot enabled")
elif args[:1] == ["--generate-hash"]:
    lines = sys.stdin.read().splitlines()
    if len(lines) < 2 or lines[0] != lines[1] or not lines[0]:
        print("Password doesn't match", file=sys.stderr)
        sys.exit(1)
    print("input password: \ninput password again: ")
    print("$6$standin$" + hashlib.sha512(lines[0].encode()).hexdigest())
elif args[:1] == ["--test-key"]:
    key = fp(args[1])
    if key + ".der" in listed("enrolled"):
        print(f"{args[1]} is already enrolled")
        sys.exit(1)
    if key + ".der" in listed("new"):
        print(f"{args[1]} is already in the enrollment request")
        sys.exit(1)
    print(f"{args[1]} is not enrolled")
elif args[:1] == ["--import"] and "--hash-file" in args:
    hash_file = args[args.index("--hash-file") + 1]
    with open(hash_file) as fh:
        if not fh.read().startswith("$6$"):
            print("Invalid hash file", file=sys.stderr)
            sys.exit(1)
    os.makedirs(os.path.join(STATE, "new"), exist_ok=True)
    with open(args[1], "rb") as src, open(os.path.join(STATE, "new", fp(args[1]) + ".der"), "wb") as dst:
        dst.write(src.read())
elif args[:1] == ["--list-new"]:
    for i, name in enumerate(listed("new"), 1):
        print(f"[key {i}]\nSHA1 Fingerprint: {name[:-4]}")
else:
    print("mokutil stand-in: unsupported " + " ".join(args), file=sys.stderr)
    sys.exit(2)
""".replace("@STATE@", MOKUTIL_STATE)


def fake_hardware_script(nvswitches: bool = True, secure_boot: bool = True) -> str:
    """Shell that lays out the recorded hardware tree on a lab host (idempotent)."""
    lines = ["set -e", f"rm -rf {FAKE_HW_ROOT}", f"mkdir -p {FAKE_HW_ROOT}/sys/bus/pci/devices"]
    if nvswitches:
        for addr in NVSWITCH_ADDRESSES:
            d = f"{FAKE_HW_ROOT}/sys/bus/pci/devices/{addr}"
            lines += [
                f"mkdir -p {d}",
                f"echo 0x10de > {d}/vendor",
                f"echo 0x22a3 > {d}/device",
                f"echo 0x068000 > {d}/class",
                f"echo 0 > {d}/numa_node",
            ]
    if secure_boot:
        efivars = f"{FAKE_HW_ROOT}/sys/firmware/efi/efivars"
        lines += [f"mkdir -p {efivars}", f"printf '\\006\\000\\000\\000\\001' > {efivars}/{SECURE_BOOT_VAR}"]
    lines += [
        f"cat > {MOKUTIL_STANDIN_PATH} <<'EOF_MOKUTIL'\n{MOKUTIL_STANDIN}EOF_MOKUTIL",
        f"chmod 0755 {MOKUTIL_STANDIN_PATH}",
    ]
    return "\n".join(lines) + "\n"


def driver_version_in(apt_dir: Path, package: str = "nvidia-kernel-dkms") -> str:
    """Upstream version of the driver package the bundle's apt repository carries."""
    debs = sorted(apt_dir.glob(f"{package}_*.deb"))
    if not debs:
        raise AssertionError(f"{package} is not in {apt_dir}: the nvidia_driver role's packages are missing")
    return upstream_version(debs[-1].name.split("_")[1].replace("%3a", ":"))


def build_gpu_test_bundle(
    out: Path, project_root: Path, model_dir: Path, cache: Path, gnupg_home: Path, work: Path
) -> dict:
    """The GPU test bundle: the operator's build (real Debian driver packages from the role defaults) without
    CUDA's real 1.5 GiB, plus stand-ins for Fabric Manager (at the driver's version), the container toolkit and
    the CUDA toolkit."""
    spec = BundleSpec(
        out=out,
        project_root=project_root,
        model_dir=model_dir,
        model_name="deepseek-tiny",
        cache=cache,
        skip_roles=("cuda_toolkit",),
        controller=False,  # the air-gapped controller's install is tested on its own (test_offline_controller_lab)
    )
    build_bundle(spec, progress=lambda _msg: None)
    driver = driver_version_in(out / "apt")
    debs = build_standins(
        work / "standins", driver, fabric_manager=True, container_toolkit=True, cuda_toolkit=True
    )
    return add_debs_to_bundle(
        out, debs, gnupg_home, note="GPU lab test bundle: real Debian driver packages, stand-ins for the rest"
    )


def pid1_start(lab, name: str) -> str:
    """Start time of the host's PID 1 (changes when the container reboots; its kernel's boot_id does not)."""
    return lab.run(name, "cut -d ' ' -f 22 /proc/1/stat").stdout.strip()


def read_json(lab, name: str, path: str) -> dict:
    return json.loads(lab.run(name, ["cat", path]).stdout)


def dpkg_version(lab, name: str, package: str) -> str:
    return lab.run(name, ["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()


def held(lab, name: str, package: str) -> bool:
    out = lab.run(name, f"dpkg --get-selections {shlex.quote(package)}").stdout
    return bool(re.search(rf"^{re.escape(package)}(:\w+)?\s+hold$", out, re.M))


def seed_bundle(lab, name: str, bundle: Path, dest: str = "/srv/deepseek-node/bundle") -> None:
    """Put the bundle's apt, wheels and keys on the host with one tar stream over the lab's ssh.

    What an operator's rsync or USB copy does; it saves the ~0.4 s per file that Ansible's copy module spends
    (a minute and a half for a bundle). offline_repo still verifies every file on the host against the manifest
    before anything is installed, and copies what differs; tests/e2e covers its own transfer.
    """
    import subprocess

    tar = subprocess.Popen(
        ["tar", "-C", str(bundle), "-cf", "-", "apt", "wheels", "keys"], stdout=subprocess.PIPE
    )
    argv = lab.ssh_argv(name)
    argv[1:1] = ["-o", "BatchMode=yes"]
    remote = f"rm -rf {dest} && mkdir -p {dest} && tar -C {dest} --no-same-owner -xf -"
    subprocess.run([*argv, "--", remote], stdin=tar.stdout, check=True, capture_output=True, timeout=300)
    tar.wait()


# Proves DKMS signs with the role's MOK key: builds a one-line module with DKMS against Debian kernel headers
# from the bundle (unpacked into a scratch dir, so no package hook starts a full NVIDIA build) and prints
# `modinfo -F signer` of the result. DKMS reads the role's framework.conf.d drop-in to sign it.
SIGNING_PROBE = r"""
set -e
B=/srv/deepseek-node/bundle/apt
X=/srv/deepseek-test-headers
rm -rf "$X" && mkdir -p "$X"
for deb in "$B"/linux-headers-*-amd64_*_amd64.deb "$B"/linux-headers-*-common_*_all.deb "$B"/linux-kbuild-*_amd64.deb; do
  dpkg-deb -x "$deb" "$X"
done
K=$(basename "$(ls -d "$X"/usr/src/linux-headers-*-amd64 | head -1)" | sed 's/^linux-headers-//')
KB=$(basename "$(ls -d "$X"/usr/lib/linux-kbuild-* | head -1)")
# The headers' Makefile and DKMS's sign-file lookup use absolute paths: link them into place.
ln -sfn "$X/usr/src/linux-headers-${K%-amd64}-common" "/usr/src/linux-headers-${K%-amd64}-common"
ln -sfn "$X/usr/lib/$KB" "/usr/lib/$KB"
M=/usr/src/dsnsignprobe-1.0
rm -rf "$M" && mkdir -p "$M"
cat > "$M/dsnsignprobe.c" <<'EOF_C'
#include <linux/module.h>
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("deepseek-node module signing probe");
static int __init probe_init(void) { return 0; }
static void __exit probe_exit(void) {}
module_init(probe_init);
module_exit(probe_exit);
EOF_C
echo 'obj-m := dsnsignprobe.o' > "$M/Makefile"
printf 'PACKAGE_NAME=dsnsignprobe\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=dsnsignprobe\nDEST_MODULE_LOCATION[0]=/updates/dkms\nAUTOINSTALL=no\n' > "$M/dkms.conf"
dkms remove -m dsnsignprobe -v 1.0 --all >/dev/null 2>&1 || true
dkms add -m dsnsignprobe -v 1.0 >/dev/null
dkms build -m dsnsignprobe -v 1.0 -k "$K" --kernelsourcedir "$X/usr/src/linux-headers-$K" > /tmp/dsnsignprobe.log 2>&1 \
  || { cat /tmp/dsnsignprobe.log; exit 1; }
KO=$(find /var/lib/dkms/dsnsignprobe -name 'dsnsignprobe.ko*' | head -1)
echo "kernel=$K"
echo "signer=$(modinfo -F signer "$KO")"
echo "sig_hashalgo=$(modinfo -F sig_hashalgo "$KO")"
dkms remove -m dsnsignprobe -v 1.0 --all >/dev/null 2>&1 || true
rm -rf "$M" "$X" "/usr/src/linux-headers-${K%-amd64}-common" "/usr/lib/$KB"
"""
