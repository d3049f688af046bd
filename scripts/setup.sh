#!/usr/bin/env bash
# Installs what building and testing nuri needs, and only what is missing (safe to run again; a
# second run takes about a second):
#   - Debian packages (apt-get, one update + one install of the missing ones),
#   - the project virtualenv .venv/ from Debian's /usr/bin/python3 with --system-site-packages
#     (so it sees python3-torch and python3-numpy), and the PyPI packages of
#     scripts/requirements.txt in it.
#   setup.sh --test  adds what only the tests need: Slurm's daemons and srun, for the tests of label
#                    slurm on a one-node cluster (scripts/slurm_local.sh), and clang 16 for the
#                    sanitizer tree with the fuzz targets; scripts/test.sh passes it.
set -euo pipefail
with_tests=0
case "${1:-}" in
  --test) with_tests=1 ;;
  "") ;;
  *) echo "usage: setup.sh [--test]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

packages=(
  cmake
  ninja-build
  g++
  libopenblas-openmp-dev
  libeigen3-dev
  libgtest-dev
  python3-venv
  python3-numpy
  python3-torch
  python3-matplotlib  # loss-curve plots; Debian's, so it keeps Debian's numpy 1.x (torch needs it)
  libdlpack-dev       # dlpack/dlpack.h for the Python extension
  pybind11-dev        # the Python extension built in a CMake tree (scripts/test.sh's build/)
  python3-dev         # Python.h for it
  libboost-context-dev  # fibers of the CUDA emulator (kernels/emu)
  libtsan2            # ThreadSanitizer runtime: the emulated kernel tests run under it
  libopenmpi-dev      # the MPI communicator (csrc/dist) ...
  openmpi-bin         # ... and mpirun for its tests (label mpi)
  nlohmann-json3-dev  # checkpoint manifests and safetensors headers (csrc/ckpt)
  libssl-dev          # SHA-256 of checkpoint files (OpenSSL's libcrypto)
  libtomlplusplus-dev # TOML run configs (csrc/core/settings.cpp)
)
if ((with_tests)); then
  packages+=(
    clang-16            # the ASan/UBSan tree and its libFuzzer targets (tests/fuzz) ...
    libclang-rt-16-dev  # ... libFuzzer and the sanitizer runtimes for clang ...
    libomp-16-dev       # ... OpenMP for clang ...
    llvm-16             # ... and llvm-symbolizer for its reports
  )
fi
if ((with_tests)); then
  packages+=(
    slurmctld slurmd slurm-client  # a one-node Slurm cluster and srun (label slurm)
  )
fi
requirements=scripts/requirements.txt
venv=.venv
python=/usr/bin/python3  # Debian's interpreter: python3-torch is installed for it only

log() { printf '[setup] %s\n' "$*"; }

# ---- Debian packages ----------------------------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      log "not root and no sudo: install ${missing[*]} by hand"
      exit 1
    fi
    sudo=(sudo)
  fi
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "Debian packages: all ${#packages[@]} present"
fi

# ---- virtualenv ---------------------------------------------------------------------------------
# Recreated when it is missing, broken, or was not made from $python with system site packages
# (e.g. by the pyenv python3 that comes first on PATH, which cannot see python3-torch).
venv_ok() {
  [[ -x "$venv/bin/python" && -f "$venv/pyvenv.cfg" ]] || return 1
  grep -Eq '^home = /usr/bin$' "$venv/pyvenv.cfg" || return 1
  grep -Eq '^include-system-site-packages = true$' "$venv/pyvenv.cfg" || return 1
  "$venv/bin/python" -c '' 2>/dev/null
}
if ! venv_ok; then
  if [[ -e "$venv" ]]; then
    log "recreating $venv/ (not a working venv of $python with system site packages)"
    rm -rf "$venv"
  else
    log "creating $venv/ from $python --system-site-packages"
  fi
  "$python" -m venv --system-site-packages "$venv"
else
  log "virtualenv $venv/: present"
fi

# Debian's torch and numpy must be visible from the venv (find_spec: no slow import of torch).
"$venv/bin/python" - <<'PY'
import importlib.util, sys
missing = [m for m in ("numpy", "torch") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"[setup] .venv cannot see {', '.join(missing)}: python3-numpy/python3-torch missing?")
PY

# ---- PyPI packages ------------------------------------------------------------------------------
# A stamp in the venv records the requirements file it was last installed from.
stamp="$venv/.nuri-requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  log "PyPI packages of $requirements: present"
else
  log "pip install -r $requirements"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements"
  printf '%s\n' "$want" >"$stamp"
fi

# ---- cuDNN frontend headers -----------------------------------------------------------------------
# cuDNN's fused attention (csrc/backend/cuda/cudnn_attention.cpp) is written against the cuDNN
# frontend's header-only C++ API. Its PyPI wheel also carries a Python module whose large
# dependencies nuri does not use, so only the wheel's include/ is unpacked, into
# .venv/cudnn-frontend-VERSION/, where CMake looks. Only where nvcc is: a real CUDA build uses it.
fe_version=1.32.0
fe_dir="$venv/cudnn-frontend-$fe_version"
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  if [[ -f "$fe_dir/include/cudnn_frontend.h" ]]; then
    log "cuDNN frontend $fe_version headers: present"
  else
    log "cuDNN frontend $fe_version headers (PyPI nvidia-cudnn-frontend, include/ only)"
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" \
      "nvidia-cudnn-frontend==$fe_version"
    # Unpacked beside, then moved into place: an interrupted unpack leaves no directory that a
    # later run would take as present.
    "$venv/bin/python" - "$tmp" "$tmp/unpacked" <<'PY'
import glob, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0]) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("include/")])
PY
    rm -rf "$fe_dir"
    mv "$tmp/unpacked" "$fe_dir"
    rm -rf "$tmp"
  fi
fi
log "done"
