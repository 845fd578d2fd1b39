# Storage benchmarks. Included from the top Makefile: `include storage/bench.mk`.
#   make bench-storage              1 GiB per case, local store and GCS emulator
#   make bench-storage SIZE=256MiB  smaller run (REPEAT=1: one run per case, not best of 2)
# Needs fake-gcs-server (make deps) for the GCS rows; set BENCH_STORES=local to skip them.
SIZE ?= 1GiB
REPEAT ?= 2
BENCH_STORES ?= local,gcs
BENCH_CODECS ?= zstd-1,zstd-3,flate-1

.PHONY: bench-storage
bench-storage:
	go run ./storage/internal/benchstorage -size $(SIZE) -stores $(BENCH_STORES) -codecs $(BENCH_CODECS) -repeat $(REPEAT)
