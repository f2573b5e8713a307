#!/usr/bin/env bash
# `make deb`: a Debian package of votemesh with its Python dependencies in their own environment.
#
#   /opt/votemesh                 a venv of Debian's python3.X (no pip in it), the project and its
#                                 dependencies from the package registry, byte-compiled
#   /usr/bin/votemesh{,-agent,-qnetd,-lab} links to the venv's console scripts
#   /lib/systemd/system/          votemesh-agent.service, votemesh-qnetd.service (not enabled)
#   /etc/votemesh                 empty: `votemesh create` / `votemesh add` fill it
#   /usr/share/doc/votemesh       install.md, first-cluster.md, agent.md, qnetd.md, README.md
#   postinst: the `votemesh` system group (control socket access)
#
# The venv is built in a staging root and moved: a venv finds its packages relative to
# pyvenv.cfg, and only the scripts' #! lines and the bytecode's source paths name the staging
# root; both are rewritten to /opt/votemesh (and checked: no file may still name the staging
# root). Usage: deploy/debian/build-deb.sh [OUTDIR]   (default dist/; prints the .deb's path)
#   DEB_PYTHON   the Debian interpreter the package runs on (default /usr/bin/python3, resolved
#                to /usr/bin/python3.X: the package depends on python3.X)
#   PIP          a pip that can install into another interpreter (--python; default .venv's)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$(pwd)
outdir=$(realpath -m "${1:-dist}")
deb_python=$(realpath "${DEB_PYTHON:-/usr/bin/python3}")
pip=${PIP:-$here/.venv/bin/pip}
prefix=/opt/votemesh

command -v dpkg-deb >/dev/null || { echo "make deb: dpkg-deb not found (Debian: apt-get install dpkg)" >&2; exit 1; }
[ -x "$deb_python" ] || { echo "make deb: $deb_python not found (Debian: apt-get install python3)" >&2; exit 1; }
case "$deb_python" in
/usr/bin/python3.*) ;;
*) echo "make deb: $deb_python is not a Debian interpreter (/usr/bin/python3.X); set DEB_PYTHON" >&2; exit 1 ;;
esac
pyver=$("$deb_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

work=$(mktemp -d "${TMPDIR:-/tmp}/votemesh-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
stage=$root$prefix

# The source, copied (the build writes build/ and *.egg-info next to it).
mkdir -p "$work/src"
cp -r pyproject.toml README.md agent qnetd proto "$work/src/"
mkdir -p "$work/src/deploy" && cp -r deploy/lab "$work/src/deploy/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

version=$("$deb_python" - "$work/src/pyproject.toml" <<'EOF'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    v = tomllib.load(f)["project"]["version"]
# PEP 440 -> Debian: pre-releases and dev builds sort before the release (~).
print(re.sub(r"\.?(dev|a|b|rc)(\d*)", r"~\1\2", v))
EOF
)
arch=$(dpkg --print-architecture)

echo "make deb: votemesh $version ($arch), python$pyver, in $work" >&2
"$deb_python" -m venv --without-pip "$stage"
"$pip" --python "$stage/bin/python" install --quiet --disable-pip-version-check \
    --no-compile --no-warn-script-location "$work/src"

# Name /opt/votemesh instead of the staging root.
grep -rlIF "$stage" "$stage/bin" "$stage/pyvenv.cfg" | while read -r f; do
    sed -i "s#$stage#$prefix#g" "$f"
done
rm -f "$stage"/bin/activate* "$stage"/bin/Activate.ps1  # never activated; they name the root
"$stage/bin/python" -m compileall -q -j0 -s "$root" -p / "$stage/lib" >/dev/null
left=$(grep -rlaF "$root" "$stage" | grep -v '/direct_url.json$' || true)
if [ -n "$left" ]; then
    echo "make deb: these files still name the staging root:" >&2
    echo "$left" >&2
    exit 1
fi
find "$stage" -name direct_url.json -delete  # names the temporary source copy

install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/votemesh" \
    "$root/DEBIAN"
install -d -m 0755 "$root/etc/votemesh"
for script in votemesh votemesh-agent votemesh-qnetd votemesh-lab; do
    [ -x "$stage/bin/$script" ] || { echo "make deb: no $script in the venv" >&2; exit 1; }
    ln -s "$prefix/bin/$script" "$root/usr/bin/$script"
done
install -m 0644 deploy/systemd/votemesh-agent.service deploy/systemd/votemesh-qnetd.service \
    "$root/lib/systemd/system/"
install -m 0644 README.md docs/install.md docs/first-cluster.md docs/agent.md docs/qnetd.md \
    deploy/debian/copyright "$root/usr/share/doc/votemesh/"
install -m 0755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm "$root/DEBIAN/"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: votemesh
Version: $version
Architecture: $arch
Maintainer: votemesh developers <votemesh@localhost>
Installed-Size: $size
Depends: python$pyver, adduser
Recommends: iproute2, util-linux, iptables, mosquitto
Section: admin
Priority: optional
Description: cluster membership and quorum agents, and a corosync-qnetd compatible arbitrator
 votemesh-agent runs on every node of a cluster: sealed UDP heartbeats on redundant links,
 membership, votequorum (two_node, wait_for_all, last_man_standing, auto_tie_breaker) and a
 qdevice client. votemesh-qnetd is a quorum arbitrator wire-compatible with corosync-qnetd.
 votemesh-lab runs a cluster in network namespaces under scripted faults and judges it.
 The votemesh command creates and joins clusters without root SSH and shows their status.
 .
 The program and its Python dependencies live in their own environment under /opt/votemesh.
EOF

mkdir -p "$outdir"
deb=$outdir/votemesh_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
