# Sourced by scripts/release.sh and scripts/pgo-train.sh: the release build
# of the tools and of the proxy, which gets a cargo run of its own
# (release.sh says why).

# The control plane, ferryctl and the certificate tool, into
# target/<host triple>/release.
build_tools() {
  cargo build --release --locked --bins -p ferry-control-plane -p ferryctl -p ferry-certs "$@"
}

# The proxy, alone.
build_proxy() {
  cargo build --release --locked --bins -p ferry-proxy "$@"
}

# build_proxy_with TARGET_DIR FLAG [cargo arguments]: the proxy with one more
# compiler flag, in a target folder of its own (other flags, other
# artifacts). --config adds FLAG to .cargo/config.toml's flags for the
# target (arrays from several configs are joined).
build_proxy_with() {
  local dir=$1 flag=$2
  shift 2
  build_proxy --target-dir "$dir" \
    --config "target.'cfg(all(target_os = \"linux\", target_env = \"gnu\"))'.rustflags=[\"$flag\"]" "$@"
}
