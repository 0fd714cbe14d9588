#!/usr/bin/env bash
# Install edgeseg from this offline bundle on a machine without internet: check every file's
# sha256, create a virtual environment, install from wheelhouse/ only (pip never looks
# anywhere else), then segment the bundled sample images as a self-test.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash install_offline.sh [options]

  --prefix DIR            install into DIR/venv [default: /opt/edgeseg as root,
                          else $HOME/edgeseg]
  --python PYTHON         the Python to build the environment with [default: python3];
                          must be the version the bundle was built for (bundle.txt)
  --replace               replace an existing DIR/venv (stop edgeseg-watch first)
  --system-site-packages  let the environment see the system's packages (e.g. the
                          TensorRT of an NVIDIA container)
  --model ARTIFACT        self-test with this exported model (its .json beside it)
                          instead of the built-in default model
  --no-self-test          skip segmenting the sample images
  --verify-only           only check the bundle's files against SHA256SUMS
  -h, --help              show this help

Exit status: 0 installed and self-tested; 1 refused or failed, nothing usable installed;
3 installed, but the self-test failed (the message says why).
EOF
}

die() {
    echo "install_offline: $*" >&2
    exit 1
}

BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$(id -u)" = 0 ]; then PREFIX=/opt/edgeseg; else PREFIX=$HOME/edgeseg; fi
PYTHON=python3
REPLACE=0
SITE=()
MODEL=()
SELF_TEST=1
VERIFY_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) PREFIX=${2:?--prefix needs a folder}; shift ;;
        --python) PYTHON=${2:?--python needs a command}; shift ;;
        --replace) REPLACE=1 ;;
        --system-site-packages) SITE=(--system-site-packages) ;;
        --model) MODEL=(--model "$(realpath "${2:?--model needs a file}")"); shift ;;
        --no-self-test) SELF_TEST=0 ;;
        --verify-only) VERIFY_ONLY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

verify() {
    cd "$BUNDLE"
    [ -f SHA256SUMS ] || die "no SHA256SUMS in $BUNDLE: not a complete bundle"
    command -v sha256sum >/dev/null || die "sha256sum (coreutils) is needed to check the bundle"
    if ! sha256sum --check --strict --quiet SHA256SUMS; then
        die "the files marked FAILED above do not match SHA256SUMS: the bundle was damaged" \
            "or modified after it was built; copy it again from the original"
    fi
    # A wheel or model not in the list is refused too: pip could install it instead of ours.
    local unlisted
    unlisted=$(LC_ALL=C comm -23 \
        <(find wheelhouse models -type f 2>/dev/null | LC_ALL=C sort) \
        <(awk '{ print $2 }' SHA256SUMS | LC_ALL=C sort))
    [ -z "$unlisted" ] || die "files not listed in SHA256SUMS (remove them or copy the" \
        "bundle again): $unlisted"
    echo "bundle verified: $(wc -l <SHA256SUMS) files match SHA256SUMS"
}

install() {
    local want have venv pip_wheel
    want=$(sed -n 's/^python=//p' "$BUNDLE/bundle.txt")
    have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "cannot run $PYTHON; pass --python with the Python $want command"
    [ "$have" = "$want" ] || die "this bundle is for Python $want, but $PYTHON is $have:" \
        "pass --python python$want, or build a bundle with --python-version $have"
    venv=$PREFIX/venv
    if [ -e "$venv" ]; then
        [ "$REPLACE" = 1 ] || die "$venv exists: stop what runs from it, then add --replace"
        chmod -R u+w "$venv" && rm -rf "$venv"
    fi
    mkdir -p "$PREFIX"
    # --without-pip: works where ensurepip is missing (Debian without python3-venv); pip
    # itself runs from its wheel in the wheelhouse.
    "$PYTHON" -m venv --without-pip "${SITE[@]}" "$venv"
    pip_wheel=$(find "$BUNDLE/wheelhouse" -maxdepth 1 -name 'pip-*.whl' | head -n 1)
    [ -n "$pip_wheel" ] || die "no pip wheel in $BUNDLE/wheelhouse"
    # --no-index and no configuration: wheelhouse/ is the only place pip may install from.
    if ! PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$pip_wheel/pip" install --isolated \
        --no-index --find-links "$BUNDLE/wheelhouse" --no-cache-dir --no-warn-script-location \
        --disable-pip-version-check edgeseg; then
        rm -rf "$venv"
        die "pip could not install edgeseg from the wheelhouse alone (see above): the bundle" \
            "was built for another platform or Python ($(sed -n 's/^platforms=//p' \
            "$BUNDLE/bundle.txt"))"
    fi
    # The built-in model stays read-only, also for the account that installed it.
    find "$venv" -path '*/site-packages/edgeseg/models' -type d -exec chmod -R a-w {} +
    echo "installed: $venv/bin/edgeseg"
}

self_test() {
    local labels
    SELF_TEST_DIR=$(mktemp -d)
    trap 'rm -rf "$SELF_TEST_DIR"' EXIT
    echo "self-test: edgeseg segment --samples ${MODEL[*]}"
    if "$PREFIX/venv/bin/edgeseg" segment --samples -o "$SELF_TEST_DIR/out" "${MODEL[@]}"; then
        labels=$(find "$SELF_TEST_DIR/out" -name '*_labels.*' | wc -l)
        if [ "$labels" -gt 0 ]; then
            echo "self-test passed: $labels label images written"
            return
        fi
    fi
    echo "install_offline: SELF-TEST FAILED: edgeseg is installed in $PREFIX/venv, but" \
        "segmenting the sample images failed (see above). 'no built-in model installed'" \
        "means this bundle was built without the default model: give one with --model" \
        "ARTIFACT (here and to every edgeseg command)." >&2
    exit 3
}

verify
[ "$VERIFY_ONLY" = 1 ] && exit 0
install
if [ "$SELF_TEST" = 1 ]; then self_test; fi
echo "done. Run $PREFIX/venv/bin/edgeseg --help (or add $PREFIX/venv/bin to PATH)."
