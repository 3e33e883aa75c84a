#!/usr/bin/env bash
# Fashion-MNIST for ntk_vs_nn: installs Debian's dataset-fashion-mnist package, which puts the four gzipped
# IDX files in /usr/share/datasets/fashion-mnist (ntk_vs_nn.data.images.fashion_mnist's default folder).
# Where apt cannot be used (no apt-get, not root and no sudo), prints in one line how to get the files.
set -euo pipefail

DIR=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

have_all() {
    local f
    for f in $FILES; do [ -f "$DIR/$f" ] || return 1; done
}

if have_all; then
    echo "Fashion-MNIST already in $DIR"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi

if command -v apt-get >/dev/null 2>&1 && [ "$SUDO" != "none" ]; then
    # Refresh the package lists only when the package is not known yet.
    if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
        $SUDO apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist
    if have_all; then
        echo "Fashion-MNIST installed in $DIR"
        exit 0
    fi
    echo "apt-get installed dataset-fashion-mnist but $DIR lacks the IDX files" >&2
    exit 1
fi

echo "cannot use apt here: get the four Fashion-MNIST IDX files ($FILES) from the Fashion-MNIST project" \
     "(github.com/zalandoresearch/fashion-mnist, folder data/fashion) into a folder and" \
     "export NTK_VS_NN_FASHION_MNIST=/that/folder" >&2
exit 1
