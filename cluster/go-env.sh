# Sourced by cluster/build*.sh: one Go toolchain and one module and build cache for every binary
# they build (CACHE is the caller's cache root), so a second build reuses what the first compiled.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"  # a go.mod may ask for a newer Go than the machine's: fetch it
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOFLAGS="-mod=readonly"
export CGO_ENABLED=0
