# Sluice build, test and demo entry points. Run as root on Linux for the
# privileged tests and the demo (BPF programs, cgroups, network namespaces).
GO      ?= go
BIN     := bin/sluice
BPF_GEN := dataplane/service_bpfel.go dataplane/service_bpfel.o

.PHONY: all build generate check-generate test unit e2e bench bench-micro demo fmt vet clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/sluice

# Regenerates the committed BPF objects (needs clang-19 and libbpf-dev).
generate:
	$(GO) generate ./dataplane/...

# Fails when regenerating would change a committed BPF object.
check-generate: generate
	@if ! git diff --quiet -- $(BPF_GEN); then \
		echo "generated BPF objects differ from the committed ones; run 'make generate' and commit:"; \
		git diff --stat -- $(BPF_GEN); exit 1; \
	fi

vet:
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...

test: check-generate vet
	$(GO) test -count=1 -timeout 30m ./...

# The scenarios on the simulated cluster, alone (`make test` runs them too).
# Needs root, curl, wrk and fortio: see docs/testing.md.
e2e:
	$(GO) test -count=1 -v -timeout 15m -run '^TestScenario' ./e2e/

# The side-by-side benchmark: no mesh, kube-proxy's iptables and nftables
# modes and Sluice, interleaved on the simulated cluster; rewrites
# docs/benchmarks.md and docs/benchmarks.json. Needs root, iptables, nft and
# conntrack; took 18 minutes on two cores (9 rounds).
# Then the L7 benchmark: the latency the L7 proxy adds against direct and
# the proxy's memory per 1,000 connections; prints its report (docs/l7.md,
# Measured). Needs root and fortio; took 4 minutes on two cores.
bench:
	$(GO) test -run '^$$' -bench '^BenchmarkSideBySide$$' -benchtime 1x -timeout 90m ./e2e/ \
		-args -sidebyside.report docs/benchmarks.md -sidebyside.json docs/benchmarks.json
	$(GO) test -run '^$$' -bench '^BenchmarkL7$$' -benchtime 1x -timeout 30m ./e2e/

# The packages' own benchmarks (each doc cites its command).
bench-micro:
	$(GO) test -run '^$$' -bench 'Connect|PlanOneChange|WaitForReaders' -benchtime 2000x -count 5 ./dataplane/
	$(GO) test -run '^$$' -bench 'SameNode' -benchtime 20000x -count 3 ./dataplane/
	$(GO) test -run '^$$' -bench 'FlowExport' -benchtime 20000x -count 3 ./dataplane/
	$(GO) test -run '^$$' -bench 'FastPathChurn' -benchtime 100000x ./dataplane/
	$(GO) test -run '^$$' -bench 'XDSEndpointChange10k' -benchtime 300x ./e2e/
	$(GO) test -run '^$$' -bench 'XDSFullSync10k' -benchtime 5x ./e2e/
	$(GO) test -run '^$$' -bench 'AgentRSS10k' -benchtime 2x ./e2e/
	$(GO) test -run '^$$' -bench 'Translat' -benchtime 20x ./xds/translate/

demo: build
	./$(BIN) demo --mesh examples/mesh.yaml

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '_bpfel.go$$')
	clang-format-19 -i bpf/*.c bpf/*.h

clean:
	rm -rf bin
